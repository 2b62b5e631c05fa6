"""Indexes as wholes: the ones under the user data dir, removing one, repairing one.

An index named on the command line (`--index photos`) lives under `<user data dir>/indexes/`; `list_indexes`
lists those. Removal and repair take the index's write lock (`index/lock.py`); removal refuses, and deletes
nothing, while a build runs, and it only ever deletes a folder that holds a `retrv.json`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from retrv.config import data_dir, resolve_index_path
from retrv.errors import IndexNotFoundError, RetrvError, UsageError

if TYPE_CHECKING:
    from retrv.index.repair import RepairReport


INDEX_FOLDERS = ("lance", "ann", "damaged", "thumbs")  # besides retrv.json and the lock: all retrv writes there


@dataclass
class IndexSummary:
    name: str
    path: str
    encoder: str | None  # None: unreadable (the error says why)
    items: int | None
    size_bytes: int
    last_build: str | None  # when the table last changed, ISO 8601 UTC
    error: str | None = None


def indexes_dir() -> Path:
    return data_dir() / "indexes"


def list_indexes() -> list[IndexSummary]:
    """Every index under the user data dir, by name; a damaged one is listed with its error."""
    return [describe_index(indexes_dir() / name) for name in index_names()]


def describe_index(index: str | os.PathLike[str]) -> IndexSummary:
    """What `retrv index list` shows of one index; IndexNotFoundError when there is none at `index`."""
    from retrv.index.store import Store

    root = _existing_root(index)
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    versions = root / "lance" / "items.lance" / "_versions"
    stamps = [f.stat().st_mtime for f in versions.glob("*.manifest")] if versions.is_dir() else []
    last = datetime.fromtimestamp(max(stamps), timezone.utc).isoformat(timespec="seconds") if stamps else None
    try:
        store = Store.open(root)
        return IndexSummary(root.name, str(root), store.meta.encoder, store.count(), size, last)
    except RetrvError as e:
        return IndexSummary(root.name, str(root), None, None, size, last, error=str(e))


def index_names() -> list[str]:
    """The names `--index` completes to (cheap: no table is opened)."""
    from retrv.index.store import META_FILE

    folder = indexes_dir()
    return sorted(p.name for p in folder.iterdir() if (p / META_FILE).is_file()) if folder.is_dir() else []


def remove_index(index: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """Delete the index at `index`: retrv's own files in its folder (what was indexed is not touched), then the
    folder when nothing else is in it. Returns the folder and the names of other files left there.
    IndexBusyError while a build writes it; IndexNotFoundError when there is no index there."""
    from retrv.index.lock import LOCK_FILE, write_lock
    from retrv.index.store import META_FILE

    root = _existing_root(index)
    with write_lock(root, wait=False):
        (root / META_FILE).unlink()  # first: a half-deleted folder is no longer an index
        for folder in INDEX_FOLDERS:
            shutil.rmtree(root / folder, ignore_errors=True)
    (root / LOCK_FILE).unlink(missing_ok=True)
    left = sorted(p.name for p in root.iterdir())
    if not left:
        root.rmdir()
    return root, left


def repair_index(index: str | os.PathLike[str] | None, *, notify: Callable[[str], None] | None = None) -> RepairReport:
    """Repair the index at `index` (`retrv.index.repair`), holding its write lock."""
    from retrv.index.lock import write_lock
    from retrv.index.repair import repair
    from retrv.index.store import items_schema, read_meta

    root = _local_root(index, "retrv index repair")
    meta = read_meta(root)
    with write_lock(root, notify=notify):
        return repair(root, schema=items_schema(meta.dim))


def _local_root(index: str | os.PathLike[str] | None, command: str) -> Path:
    root = resolve_index_path(index)
    if isinstance(root, str):
        raise UsageError(
            f"{command} works on a local index; {root} is on object storage (use the object store's own tools "
            "there, or Lance's to restore an older version)"
        )
    return root


def _existing_root(index: str | os.PathLike[str], command: str = "retrv index rm") -> Path:
    from retrv.index.store import META_FILE

    root = _local_root(index, command)
    if not (root / META_FILE).is_file():
        raise IndexNotFoundError(f"no index at {root}" + known_names_hint())
    return root


def known_names_hint() -> str:
    """'; indexes under DIR: a, b' for an error about an index that is not there ('' when there are none)."""
    names = index_names()
    return f"; indexes under {indexes_dir()}: {', '.join(names)}" if names else ""
