"""`retrv index ...`: look after indexes themselves: list, remove, compact, repair."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from retrv.cli.common import (
    IndexOption,
    JsonOption,
    QuietOption,
    StorageOptionsOption,
    escape,
    handle_errors,
    notice,
    print_json,
    settings_from_flags,
    silence_library,
    stdout_console,
)
from retrv.cli.info import human_size

app = typer.Typer(help="Look after indexes: list, remove, compact, repair.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(
    json_out: JsonOption = False,
    names: Annotated[bool, typer.Option("--names", help="Only the names, one per line (for scripts).")] = False,
) -> None:
    """List the indexes under the user data dir: name, items, size, encoder, last build."""
    from dataclasses import asdict

    from retrv.index.catalog import index_names, indexes_dir, list_indexes

    if names:
        for name in index_names():
            print(name)
        return
    found = list_indexes()
    if json_out:
        print_json({"schema": "retrv.index-list/1", "dir": str(indexes_dir()), "indexes": [asdict(s) for s in found]})
        return
    if not found:
        print(f"no indexes under {indexes_dir()}; make one with: retrv build-index FOLDER --index NAME")
        return
    rows = [("NAME", "ITEMS", "SIZE", "LAST BUILD (UTC)", "ENCODER")]
    for s in found:
        items = "damaged" if s.items is None else str(s.items)
        when = (s.last_build or "-").replace("+00:00", "").replace("T", " ")
        rows.append((escape(s.name), items, human_size(s.size_bytes), when, escape(s.encoder or s.error or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    console = stdout_console()
    for r in rows:
        console.print(
            "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4], markup=False
        )


@app.command("rm")
@handle_errors
def rm(
    index: Annotated[str, typer.Argument(metavar="NAME|DIR", help="The index to delete: a name or a directory.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed when not on a terminal).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Delete an index (its files only: the photos and documents it indexed are not touched). Asks first on a
    terminal; refused while a build writes it."""
    from retrv.errors import UsageError
    from retrv.index.catalog import describe_index, remove_index

    summary = describe_index(index)
    if not yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise UsageError(f"not deleting index {summary.path} without --yes (no terminal to ask on)")
        items = "?" if summary.items is None else summary.items
        question = f"Delete index {summary.path} ({items} items, {human_size(summary.size_bytes)})?"
        if not typer.confirm(question, default=False, err=True):
            print("nothing deleted", file=sys.stderr)
            raise typer.Exit(1)
    root, left = remove_index(index)
    if json_out:
        print_json({"schema": "retrv.index-rm/1", "removed": str(root), "left": left})
        return
    print(f"deleted index {escape(str(root))}")
    if left:
        print(f"  kept the folder: it also holds {escape(', '.join(left))}")


@app.command("compact")
@handle_errors
def compact(
    ctx: typer.Context,
    index: IndexOption = None,
    storage_options: StorageOptionsOption = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Merge the index's small data files and delete its old versions (the undo history of builds); items and
    vectors are unchanged. Refused while a build writes the index. A search running at that moment may fail
    once; run it again."""
    from dataclasses import asdict

    from retrv.index.index import Index

    silence_library(quiet)
    settings = settings_from_flags(ctx, index=index, storage_options=storage_options)
    report = Index.from_settings(settings).compact()
    if json_out:
        print_json({"schema": "retrv.index-compact/1", **asdict(report), "bytes_freed": report.bytes_freed})
        return
    print(
        f"{escape(report.index)}: {human_size(report.bytes_before)} -> {human_size(report.bytes_after)} "
        f"({human_size(max(report.bytes_freed, 0))} freed)"
    )


@app.command("repair")
@handle_errors
def repair(
    ctx: typer.Context, index: IndexOption = None, json_out: JsonOption = False, quiet: QuietOption = False
) -> None:
    """Make a damaged index readable again: the newest version whose every row reads becomes the latest
    (damaged files are moved to <index>/damaged/, nothing is deleted). Then run build-index on your folders:
    it adds back whatever the lost versions held."""
    from dataclasses import asdict

    from retrv.index.catalog import repair_index

    settings = settings_from_flags(ctx, index=index)
    report = repair_index(settings.index, notify=notice(quiet))
    if json_out:
        print_json({"schema": "retrv.repair/1", **asdict(report)})
        return
    if report.version_restored is None:
        print(
            f"{report.index}: no version could be read; the index starts over empty ({len(report.moved)} file(s) "
            "moved to damaged/). Run build-index on your folders to index them again."
        )
    elif report.version_restored == report.version_before:
        print(f"{report.index}: version {report.version_restored} reads ({report.items} items); nothing to restore")
    else:
        print(
            f"{report.index}: restored version {report.version_restored} ({report.items} items; it was at "
            f"{report.version_before}). Run build-index on your folders to add back what the newer versions held."
        )
    for path in report.moved:
        print(f"  moved aside: {path}")
    for name in report.dropped_tables:
        print(f"  dropped unreadable table {name} (retrv compress recomputes it)")
