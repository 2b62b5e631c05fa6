"""What every command shares: the error contract, settings from flags, consoles, progress, shared options.

The error contract: a `RetrvError` (every error a user can cause, `retrv/errors.py`) is printed as one line,
`retrv: error: ...`, with exit status 1; Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from retrv.config import Settings
    from retrv.index.distributed import RayCluster
    from retrv.progress import ProgressEvent

F = TypeVar("F", bound=Callable[..., Any])

FORCE_ANSWER_HELP = (
    "reason mode: when the reasoner stops without a usable answer (token cap, end of turn, no candidate named), "
    "inject <answer> and take the candidate number it finds likeliest, instead of keeping the coarse order."
)

# Options shared by several commands. Those backed by a setting read their RETRV_* variable (shown in --help);
# `settings_from_flags` tells a value typed on the command line from one read from the environment.
IndexOption = Annotated[
    str | None,
    typer.Option(
        "--index",
        "-i",
        metavar="NAME|DIR",
        envvar="RETRV_INDEX",
        help="Index name (under the user data dir) or directory (e.g. ./photos-index).",
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        metavar="DEVICE", envvar="RETRV_DEVICE", help="Where models run: auto (cuda > mps > cpu), cpu, cuda or mps."
    ),
]
EncoderOption = Annotated[
    str | None,
    typer.Option(metavar="SPEC", envvar="RETRV_ENCODER", help="Encoder: auto, lite, clip[:ID|DIR], text[:ID|DIR]."),
]
ReasonerOption = Annotated[
    str | None,
    typer.Option(
        metavar="ID|DIR",
        envvar="RETRV_REASONER",
        help="Reasoner: a Hugging Face id or a local directory (a retrv checkpoint for reason mode).",
    ),
]
StorageOptionsOption = Annotated[
    str | None,
    typer.Option(
        metavar="K=V,...",
        envvar="RETRV_STORAGE_OPTIONS",
        help="For an --index on object storage (s3://, gs://, az://): LanceDB storage options, e.g. "
        "aws_endpoint=http://127.0.0.1:9000,allow_http=true (credentials also come from the usual AWS_*, "
        "GOOGLE_*, AZURE_* variables).",
    ),
]
AnnMemoryOption = Annotated[
    str | None,
    typer.Option(
        metavar="SIZE",
        envvar="RETRV_ANN_MEMORY",
        help="Memory budget of the ANN index (e.g. 512MB, 4GiB): flat, HNSW or IVF-PQ is chosen to fit; once "
        "given it holds for the index's later builds.",
    ),
]
RayOption = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Encode on a Ray cluster: a local one started for this run, or the one --ray-address names. The "
        "files must be readable at the same paths on every node.",
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        metavar="ADDRESS",
        envvar="RAY_ADDRESS",
        help="With --ray: auto (the cluster running here, from ray start --head), HOST:PORT or ray://HOST:PORT.",
    ),
]
RayWorkersOption = Annotated[
    int | None,
    typer.Option(min=1, metavar="N", help="With --ray: encoder actors (default: one per GPU, else per CPU but one)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, notices or library warnings on stderr.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (schemas in docs/cli.md).")]
TrustRemoteCodeOption = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (off by default).")
]


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ or None, soft_wrap=True)


def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, no_color="NO_COLOR" in os.environ or None, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    """Print `retrv: error: message` on stderr (one line) and exit non-zero."""
    from retrv.items import display_text

    line = display_text(" ".join(str(message).split()))
    print(f"retrv: error: {line}", file=sys.stderr)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """The error contract (module doc): RetrvError -> one line and exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from retrv.errors import RetrvError

        try:
            return func(*args, **kwargs)
        except RetrvError as e:
            fail(str(e))
        except KeyboardInterrupt:
            print("retrv: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def settings_from_flags(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings with these flag values over the environment, the config file and the defaults.

    A value Typer read from the option's RETRV_* variable is left to `load_settings`, which reads the same
    variable, so that `Settings.origin` names the variable, not a flag.
    """
    from retrv.config import load_settings

    given = {}
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if getattr(source, "name", None) == "ENVIRONMENT":  # typer may bring its own copy of click's enum
            continue
        given[name] = value.value if hasattr(value, "value") else value
    return load_settings(given)


def silence_library(quiet: bool) -> None:
    """With --quiet, Python warnings and library logging (transformers, PIL, ...) say nothing either."""
    if quiet:
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def apply_offline(offline: bool) -> None:
    """`--offline` must set the variables before transformers is imported."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def notice(quiet: bool) -> Callable[[str], None]:
    """A callback that prints library notices (e.g. encoder fallbacks) on stderr unless --quiet."""

    def show(message: str) -> None:
        if not quiet:
            stderr_console().print(f"[yellow]note:[/yellow] {escape(message)}")

    return show


def warn(message: str) -> None:
    """A warning on stderr that --quiet does not hide: something the user must know about the results."""
    stderr_console().print(f"[yellow]warning:[/yellow] {escape(message)}")


def escape(text: str) -> str:
    """Text safe to print through rich on one line: markup escaped, control characters and non-UTF-8 bytes
    shown as escapes (`items.display_text`)."""
    from rich.markup import escape as rich_escape

    from retrv.items import display_text

    return rich_escape(display_text(text))


@contextmanager
def stop_on_interrupt() -> Iterator[Callable[[], bool]]:
    """Yield `should_stop` for long library work: the first Ctrl-C asks the work to stop at its next batch
    (what is written stays, and the command still reports), a second one interrupts at once."""
    asked: list[bool] = []

    def on_interrupt(signum: int, frame: Any) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(True)
        print("retrv: stopping after the current batch (Ctrl-C again to stop now)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: no signal handling, nothing asks to stop
        yield lambda: False
        return
    try:
        yield lambda: bool(asked)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Callable[[ProgressEvent], None] | None]:
    """A rich progress bar on stderr, only on a TTY and without --quiet; yields the callback."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=stderr_console(), transient=False) as bar:

        def update(event: ProgressEvent) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total, note="")
            note = escape(event.message or "")
            bar.update(tasks[event.stage], completed=event.done, total=event.total, note=note)

        yield update


def print_json(data: Any) -> None:
    """JSON on stdout, valid UTF-8 whatever the data: the bytes of a file name that is not UTF-8 (Python's
    surrogate escapes) are written as JSON escapes (`\\udcff`), which decode back to the same name."""
    import json
    import re

    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write(re.sub(r"[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


def ray_cluster(ray: bool, address: str | None, workers: int | None) -> RayCluster | None:
    """The Ray cluster `--ray` asks for (local, or at `address`), or None: this process does the work."""
    from retrv.errors import UsageError

    if not ray:
        if workers is not None:
            raise UsageError("--ray-workers needs --ray")
        return None
    try:
        import ray as _  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'retrv[scale]'") from None
    from retrv.index.distributed import LOCAL, RayCluster, connect

    cluster = RayCluster(address=address or LOCAL, workers=workers)
    connect(cluster)  # now, before LanceDB starts its runtime: Ray forks its processes, which LanceDB warns about
    return cluster
