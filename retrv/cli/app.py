"""The `retrv` command: one Typer app; each command lives in its own thin module."""

from __future__ import annotations

from typing import Annotated

import typer

from retrv import __version__
from retrv.cli.bench import app as bench_app
from retrv.cli.build_index import build_index
from retrv.cli.common import apply_offline, note_interrupts
from retrv.cli.completions import completions
from retrv.cli.compress import compress
from retrv.cli.data import app as data_app
from retrv.cli.export import export
from retrv.cli.forget import forget
from retrv.cli.index import app as index_app
from retrv.cli.info import info
from retrv.cli.search import search
from retrv.cli.serve import serve
from retrv.cli.train import app as train_app

app = typer.Typer(
    name="retrv",
    help="Multimodal retrieval that is precise and fast: embeddings find the top-K, a multimodal LLM reasons over them.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"retrv {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Never touch the network (sets HF_HUB_OFFLINE=1); may also follow a command."),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    apply_offline(offline)


app.command("build-index")(build_index)
app.command("search")(search)
app.command("serve")(serve)
app.command("info")(info)
app.command("compress")(compress)
app.command("forget")(forget)
app.command("export")(export)
app.command("completions")(completions)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")


GLOBAL_FLAGS = ("--offline",)


def hoist_global_flags(args: list[str]) -> list[str]:
    """Global flags may also come after the command (`retrv search x --offline`): move them in front of it.
    Nothing after a `--` is touched."""
    end = args.index("--") if "--" in args else len(args)
    found = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return found + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def main() -> None:
    import sys

    note_interrupts()
    app(args=hoist_global_flags(sys.argv[1:]), prog_name="retrv")


if __name__ == "__main__":
    main()
