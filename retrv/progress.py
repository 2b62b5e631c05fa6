"""How the library reports progress without printing: a callback the CLI renders on stderr."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """`stage` names the work ("scan", "encode", "compress", ...); `total` is None when unknown."""

    stage: str
    done: int
    total: int | None = None
    message: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def emit(
    callback: ProgressCallback | None, stage: str, done: int, total: int | None = None, message: str | None = None
) -> None:
    if callback is not None:
        callback(ProgressEvent(stage, done, total, message))
