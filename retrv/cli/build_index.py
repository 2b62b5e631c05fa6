"""`retrv build-index PATH...`: add folders and files to an index, incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import DEVICE_HELP, INDEX_HELP, handle_errors, notice, print_json, progress_bar, stderr_console


@handle_errors
def build_index(
    paths: Annotated[list[Path], typer.Argument(help="Folders or files to index (images and .txt/.md documents).")],
    index: Annotated[str | None, typer.Option("--index", "-i", help=INDEX_HELP)] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Encoder spec: auto, clip:ID|DIR, text:ID|DIR, lite. [env: RETRV_ENCODER]")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Items per model batch. [env: RETRV_BATCH_SIZE]")] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of paths to skip (repeatable), e.g. '*/thumbnails/*'.")
    ] = None,
    include_hidden: Annotated[
        bool, typer.Option("--include-hidden", help="Also index hidden files and folders.")
    ] = False,
    max_megapixels: Annotated[
        float | None, typer.Option(help="Skip images larger than this (decompression-bomb guard).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notices.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every skipped file with its reason.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the build report as JSON (schema in docs/cli.md).")
    ] = False,
) -> None:
    """Index folders of photos and documents. Re-running is incremental: unchanged files are skipped,
    renamed or duplicated files reuse their vectors, vanished files are removed."""
    from retrv.config import load_settings
    from retrv.index.index import Index

    settings = load_settings(
        dict(index=index, encoder=encoder, batch_size=batch_size, device=device, max_megapixels=max_megapixels)
    )
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    idx = Index.open(
        settings.index, create=True, encoder=settings.encoder, device=settings.device, notify=notice(quiet)
    )
    err = stderr_console()
    if not quiet:
        err.print(f"index {idx.root} · encoder {idx.store.meta.encoder} on {idx.encoder.device}", style="dim")
    with progress_bar(quiet) as progress:
        report = idx.add(
            paths,
            excludes=tuple(exclude or ()),
            include_hidden=include_hidden,
            batch_size=settings.batch_size,
            loader_threads=settings.loader_threads,
            max_megapixels=settings.max_megapixels,
            max_text_bytes=settings.max_text_bytes,
            progress=progress,
        )
    if json_out:
        print_json(
            {"schema": "retrv.build/1", "index": str(idx.root), "encoder": idx.store.meta.encoder, **report.to_dict()}
        )
        return
    summary = (
        f"added {report.added}, updated {report.updated}, reused {report.reused}, "
        f"removed {report.removed}, unchanged {report.unchanged}, skipped {len(report.skipped)}"
    )
    print(summary)
    reasons = report.skipped_by_reason()
    if reasons and not quiet:
        err.print("skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())), style="yellow")
    if verbose:
        for skip in report.skipped:
            err.print(f"  skipped {skip.path}: {skip.reason}", markup=False)
    elif report.skipped and not quiet:
        err.print("  (--verbose lists them)", style="dim")
