"""`retrv export OUT`: an index's items and vectors as Parquet, NumPy or JSON Lines, for other tools."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import (
    IndexOption,
    JsonOption,
    QuietOption,
    StorageOptionsOption,
    escape,
    handle_errors,
    print_json,
    progress_bar,
    settings_from_flags,
)


class ExportFormat(str, enum.Enum):
    parquet = "parquet"
    npy = "npy"
    jsonl = "jsonl"


SUFFIX_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".npy": "npy"}


@handle_errors
def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The file (parquet, jsonl) or folder (npy) to write.")],
    index: IndexOption = None,
    fmt: Annotated[
        ExportFormat | None,
        typer.Option("--format", help="parquet, npy or jsonl (default: from OUT's suffix)."),
    ] = None,
    precomputed: Annotated[
        str | None,
        typer.Option(metavar="TABLE", help="Also export a table of precomputed reasoner tokens (see `retrv info`)."),
    ] = None,
    storage_options: StorageOptionsOption = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write every item of an index (id, source, modality, text, image path, dates, content hash) with its
    vector, in batches; the layouts and how to load them in pandas or faiss are in docs/cli.md."""
    from dataclasses import asdict

    from retrv.errors import UsageError
    from retrv.index.export import export_index
    from retrv.index.index import Index

    chosen = fmt.value if fmt is not None else SUFFIX_FORMATS.get(out.suffix.lower())
    if chosen is None and out.exists():
        raise UsageError(f"{out} exists; export writes a new file or folder")
    if chosen is None:
        raise UsageError(f"cannot tell the format from {out.name!r}: give --format parquet, npy or jsonl")
    settings = settings_from_flags(ctx, index=index, storage_options=storage_options)
    opened = Index.from_settings(settings)
    with progress_bar(quiet or json_out) as progress:
        report = export_index(opened.store, out, chosen, precomputed=precomputed, progress=progress)
    if json_out:
        print_json({"schema": "retrv.export/1", "index": str(opened.root), **asdict(report)})
        return
    print(f"exported {report.items} item(s) ({report.dim}-d vectors) to {escape(report.out)} as {report.format}")
