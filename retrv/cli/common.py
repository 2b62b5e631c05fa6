"""What every command shares: the error contract, settings from flags, consoles, progress, shared options.

The error contract: a `RetrvError` (every error a user can cause, `retrv/errors.py`) is printed as one line,
`retrv: error: ...`, with exit status 1; Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import click
import typer

from retrv.config import DEFAULT_REASONER

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
        help=(
            "Reasoner: a Hugging Face id or a local directory. Score mode reads any instruct VLM; reason mode a "
            f"Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3.5 model, or a retrv checkpoint. With --rerank and no "
            f"reasoner: {DEFAULT_REASONER}."
        ),
    ),
]
CandidateTokensOption = Annotated[
    str | None,
    typer.Option(
        metavar="icm|glance|full",
        envvar="RETRV_CANDIDATE_TOKENS",
        help="reason mode: candidates as 2 ICM tokens (a retrv checkpoint), a glance (a thumbnail and the first "
        "words: any Qwen-VL-family instruct VLM) or every token. Default: icm with ICM weights, else glance.",
    ),
]
GlanceImageTokensOption = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        envvar="RETRV_GLANCE_IMAGE_TOKENS",
        help="reason mode, glance: at most this many image tokens per candidate (4), within the model's own image "
        "budget.",
    ),
]
GlanceTextTokensOption = Annotated[
    int | None,
    typer.Option(
        metavar="N", envvar="RETRV_GLANCE_TEXT_TOKENS", help="reason mode, glance: text tokens per candidate (16)."
    ),
]
ScoreStyleOption = Annotated[
    str | None,
    typer.Option(
        metavar="lamra|retllm",
        envvar="RETRV_SCORE_STYLE",
        help="score mode: lamra (coarse + w * P(yes)) or retllm (P(True) over the vocabulary, 2 decimals, ties by "
        "entropy).",
    ),
]
VisualRetracingOption = Annotated[
    bool | None,
    typer.Option(
        "--visual-retracing/--no-visual-retracing",
        envvar="RETRV_VISUAL_RETRACING",
        help="score mode: when the model hesitates mid-way, its FFN looks again at the input (RetLLM's MemVR; "
        "dense models of at least 7 layers).",
        show_default=False,
    ),
]


class RerankMode(str, enum.Enum):
    none = "none"
    score = "score"
    reason = "reason"


RerankKOption = Annotated[
    int | None,
    typer.Option(metavar="N", envvar="RETRV_RERANK_K", help="How many coarse candidates the reranker sees."),
]
FusionWeightOption = Annotated[
    float | None,
    typer.Option(metavar="W", envvar="RETRV_FUSION_WEIGHT", help="score mode: final = coarse + W * P(yes)."),
]
MaxInspectionsOption = Annotated[
    int | None,
    typer.Option(metavar="N", envvar="RETRV_MAX_INSPECTIONS", help="reason mode: cap on detail inspections."),
]
MaxNewTokensOption = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        envvar="RETRV_MAX_NEW_TOKENS",
        help="reason mode: cap on generated tokens (then the coarse order stands, or see --force-answer).",
    ),
]
ForceAnswerOption = Annotated[bool, typer.Option("--force-answer", help=FORCE_ANSWER_HELP)]
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
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        envvar="RETRV_TOKEN",
        help="The secret of a `retrv serve` that needs one (sent as Authorization: Bearer TOKEN).",
    ),
]
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


_INTERRUPTED: list[bool] = []


def note_interrupts() -> None:
    """Remember a Ctrl-C before raising KeyboardInterrupt as Python does: a library that turns the interrupt into
    an error of its own (an import cut short becomes a ModuleNotFoundError) still ends as an interrupt."""

    def on_interrupt(signum: int, frame: Any) -> None:
        _INTERRUPTED.append(True)
        signal.default_int_handler(signum, frame)

    with contextlib.suppress(ValueError):  # not the main thread (a test runner): Python's own handling stands
        signal.signal(signal.SIGINT, on_interrupt)


def handle_errors(func: F) -> F:
    """The error contract (module doc): RetrvError -> one line and exit 1; Ctrl-C -> exit 130, also when the
    interrupt surfaced as another error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from retrv.errors import RetrvError

        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except RetrvError as e:
            if _INTERRUPTED:
                _interrupted()
            fail(str(e))
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # the command's own exit
        except Exception:
            if _INTERRUPTED:
                _interrupted()
            raise

    return wrapper  # type: ignore[return-value]


def _interrupted() -> None:
    print("retrv: interrupted", file=sys.stderr)
    raise typer.Exit(130) from None


# The stage-2 flags that only one rerank mode reads (`search` notes the others as doing nothing).
MODE_FLAGS = {
    "score": ("fusion_weight", "score_style", "visual_retracing"),
    "reason": (
        "max_inspections",
        "max_new_tokens",
        "force_answer",
        "candidate_tokens",
        "glance_image_tokens",
        "glance_text_tokens",
    ),
}


def stage2_settings(ctx: typer.Context) -> dict[str, Any]:
    """The stage-2 flags of a command that takes them all (search, serve, bench), by setting name, for
    `settings_from_flags`."""
    from retrv.config import SETTING_NAMES

    names = ("reasoner", "rerank", "rerank_k", *MODE_FLAGS["score"], *MODE_FLAGS["reason"])
    return {name: ctx.params[name] for name in names if name in SETTING_NAMES}


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
    settings = load_settings(given)
    if "index" in flags:
        _note_a_folder_the_name_hides(settings, notice(bool(ctx.params.get("quiet"))))
    return settings


def _note_a_folder_the_name_hides(settings: Settings, notify: Callable[[str], None]) -> None:
    """`--index photos` is the named index in the user data dir, even where `./photos` is an index too: say so."""
    from pathlib import Path

    from retrv.config import INDEX_META_FILE, is_index_name, resolve_index_path

    name = settings.index
    if (
        is_index_name(name)
        and (Path(name) / INDEX_META_FILE).is_file()
        and Path(name).resolve() != resolve_index_path(name)
    ):
        notify(
            f"index {name!r} (from {settings.origin('index')}) is the named index at {resolve_index_path(name)}; "
            f"for the index in the folder here, pass ./{name}"
        )


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
    """JSON on stdout, valid UTF-8 whatever the data (`items.json_text`)."""
    from retrv.items import json_text

    sys.stdout.write(json_text(data) + "\n")


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
