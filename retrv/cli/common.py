"""What every command shares: consoles, progress on stderr, one-line errors, shared options."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from retrv.progress import ProgressEvent

F = TypeVar("F", bound=Callable[..., Any])

INDEX_HELP = "Index name (under the user data dir) or directory (e.g. ./photos-index). [env: RETRV_INDEX]"
DEVICE_HELP = "Where models run: auto (cuda > mps > cpu), cpu, cuda or mps. [env: RETRV_DEVICE]"
FORCE_ANSWER_HELP = (
    "reason mode: when the reasoner stops without a usable answer (token cap, end of turn, no "
    "candidate named), inject <answer> and take the candidate number it finds likeliest, instead of "
    "keeping the coarse order (measured on the tiny world: worse; docs/training.md)."
)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ or None, soft_wrap=True)


def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, no_color="NO_COLOR" in os.environ or None, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    """Print `retrv: error: message` on stderr (one line) and exit non-zero."""
    line = " ".join(str(message).split())
    print(f"retrv: error: {line}", file=sys.stderr)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """User-caused errors become one line on stderr and exit 1; Ctrl-C exits 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from retrv.errors import RetrvError

        try:
            return func(*args, **kwargs)
        except (RetrvError, ValueError, FileNotFoundError) as e:
            fail(str(e))
        except KeyboardInterrupt:
            print("retrv: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def apply_offline(offline: bool) -> None:
    """`--offline` must set the variables before transformers is imported."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def notice(quiet: bool) -> Callable[[str], None]:
    """A callback that prints library notices (e.g. encoder fallbacks) on stderr unless --quiet."""

    def show(message: str) -> None:
        if not quiet:
            stderr_console().print(f"[yellow]note:[/yellow] {message}")

    return show


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Callable[[ProgressEvent], None] | None]:
    """A rich progress bar on stderr, only on a TTY and without --quiet; yields the callback."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=stderr_console(),
        transient=False,
    ) as bar:

        def update(event: ProgressEvent) -> None:
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total, note="")
            bar.update(tasks[event.stage], completed=event.done, total=event.total, note=event.message or "")

        yield update


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
