"""Damaged index files: finding them, and `retrv index repair`.

A Lance table is a folder of data files (`data/*.lance`) and one manifest per version (`_versions/*.manifest`);
both end with Lance's magic bytes, so a truncated file shows at its tail, and a deleted one is named by the
error of the read that needed it. Repair keeps everything that still reads:

1. manifests that are damaged are moved out of the table (to `<index>/damaged/`), so Lance no longer sees them;
2. the newest version of `items` whose every row reads becomes the latest again (a Lance restore: a new version
   with that content), and the damaged data files, which it does not use, join the manifests in `damaged/`;
   when no version reads, the table starts over empty (its folder moved to `damaged/`);
3. side tables (precomputed reasoner rows) that do not read are dropped (`retrv compress` recomputes them), and
   the faiss cache is dropped (the next search rebuilds it).

What the lost versions held comes back from its sources: the next `build-index` of the same folders re-adds
every file the index no longer holds.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LANCE_MAGIC = b"LANC"
_RUST_SOURCE = re.compile(r",?\s*/\S*\.rs:\d+:\d+")  # where in Lance's Rust source an error was raised
_MISSING_FILE = re.compile(r"Not found: (?:Wrapped error: Not found: )?/?(\S*?\.lance/\S+?\.(?:lance|manifest))")


@dataclass
class RepairReport:
    index: str
    version_before: int | None  # the latest version before the repair (None: unreadable)
    version_restored: int | None  # the version whose content is now the latest (None: started over empty)
    items: int = 0  # rows after the repair
    moved: list[str] = field(default_factory=list)  # damaged files moved to <index>/damaged/
    dropped_tables: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # damaged files found (moved or left unreferenced)


def damaged_files(table_dir: Path) -> list[Path]:
    """Data files and manifests of a table that are truncated (no Lance magic at their end)."""
    bad = []
    for folder, suffix in ((table_dir / "data", ".lance"), (table_dir / "_versions", ".manifest")):
        for path in sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []:
            try:
                with open(path, "rb") as f:
                    f.seek(0, 2)
                    size = f.tell()
                    f.seek(max(size - 4, 0))
                    tail = f.read(4)
            except OSError:
                bad.append(path)
                continue
            if size < 16 or tail != LANCE_MAGIC:
                bad.append(path)
    return bad


def describe_damage(root: Path, exc: BaseException) -> str:
    """Which files of the index at `root` are damaged, for an error message."""
    found = [str(p) for p in damaged_files(root / "lance" / "items.lance")]
    missing = _MISSING_FILE.search(str(exc))
    if missing:
        found.insert(0, f"/{missing.group(1)} is missing")
    if found:
        return "; ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
    return _RUST_SOURCE.sub("", str(exc))[:200]


def _reads(table: Any) -> bool:
    try:
        table.to_arrow()
        return True
    except Exception:  # any failure to read is damage here
        return False


def _manifest_version(path: Path) -> int:
    number = int(path.stem)
    return (2**64 - 1 - number) if number > 2**63 else number  # Lance's v2 manifest names count down


def repair(root: Path, *, schema: Any, items_table: str = "items") -> RepairReport:
    """Repair the index at `root` (see the module doc); the caller holds its write lock."""
    import lancedb

    report = RepairReport(str(root), None, None)
    table_dir = root / "lance" / f"{items_table}.lance"
    aside = root / "damaged" / time.strftime("%Y%m%d-%H%M%S")
    report.damaged = [str(p) for p in damaged_files(table_dir)]
    manifests = list((table_dir / "_versions").glob("*.manifest"))
    report.version_before = max((_manifest_version(p) for p in manifests), default=None)
    for path in damaged_files(table_dir):
        if path.suffix == ".manifest":
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), aside / path.name)
            report.moved.append(str(path))
    (table_dir / "_versions" / "latest_version_hint.json").unlink(missing_ok=True)

    db = lancedb.connect(str(root / "lance"))
    versions = sorted((_manifest_version(p) for p in (table_dir / "_versions").glob("*.manifest")), reverse=True)
    table = None
    with contextlib.suppress(Exception):
        table = db.open_table(items_table)
    for version in versions if table is not None else []:
        try:
            table.checkout(version)  # type: ignore[union-attr]
        except Exception:
            continue
        if _reads(table):
            report.version_restored = version
            if version != report.version_before:
                table.restore(version)  # type: ignore[union-attr]
            table.checkout_latest()  # type: ignore[union-attr]
            report.items = int(table.count_rows())  # type: ignore[union-attr]
            for path in damaged_files(table_dir):  # data files no readable version uses any more
                aside.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), aside / path.name)
                report.moved.append(str(path))
            break
    if report.version_restored is None:  # nothing reads: start over, keeping the files aside
        aside.mkdir(parents=True, exist_ok=True)
        if table_dir.exists():
            shutil.move(str(table_dir), aside / table_dir.name)
            report.moved.append(str(table_dir))
        db.create_table(items_table, schema=schema)

    for name in db.list_tables(limit=None).tables:
        if name != items_table and not _reads(db.open_table(name)):
            db.drop_table(name)
            report.dropped_tables.append(name)
    shutil.rmtree(root / "ann", ignore_errors=True)
    return report
