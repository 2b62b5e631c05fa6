"""`retrv index ...`: look after indexes themselves."""

from __future__ import annotations

import typer

from retrv.cli.common import (
    IndexOption,
    JsonOption,
    QuietOption,
    handle_errors,
    notice,
    print_json,
    settings_from_flags,
)

app = typer.Typer(help="Look after indexes: repair a damaged one.", no_args_is_help=True)


@app.command("repair")
@handle_errors
def repair(
    ctx: typer.Context, index: IndexOption = None, json_out: JsonOption = False, quiet: QuietOption = False
) -> None:
    """Make a damaged index readable again: the newest version whose every row reads becomes the latest
    (damaged files are moved to <index>/damaged/, nothing is deleted). Then run build-index on your folders:
    it adds back whatever the lost versions held."""
    from dataclasses import asdict

    from retrv.index.index import repair_index

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
