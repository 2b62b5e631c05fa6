"""`retrv build-index PATH...`: add folders and files to an index, incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import (
    DeviceOption,
    EncoderOption,
    IndexOption,
    JsonOption,
    QuietOption,
    escape,
    handle_errors,
    notice,
    print_json,
    progress_bar,
    settings_from_flags,
    silence_library,
    stderr_console,
    stop_on_interrupt,
)


@handle_errors
def build_index(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(metavar="PATH...", help="Folders or files to index (images and .txt/.md documents).")
    ],
    index: IndexOption = None,
    encoder: EncoderOption = None,
    batch_size: Annotated[
        int | None, typer.Option(metavar="N", envvar="RETRV_BATCH_SIZE", help="Items per model batch.")
    ] = None,
    device: DeviceOption = None,
    exclude: Annotated[
        list[str] | None, typer.Option(metavar="GLOB", help="Paths to skip (repeatable), e.g. '*/thumbnails/*'.")
    ] = None,
    include_hidden: Annotated[
        bool, typer.Option("--include-hidden", help="Also index hidden files and folders.")
    ] = False,
    max_megapixels: Annotated[
        float | None,
        typer.Option(
            metavar="MP", envvar="RETRV_MAX_MEGAPIXELS", help="Skip images larger than this (decompression-bomb guard)."
        ),
    ] = None,
    quiet: QuietOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every skipped file with its reason.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Index folders of photos and documents. Re-running is incremental: unchanged files are skipped,
    renamed or duplicated files reuse their vectors, vanished files are removed. Ctrl-C stops after the
    current batch: what was written stays, and the next run picks up where it stopped."""
    from retrv.devices import resolve_device
    from retrv.errors import ScanError
    from retrv.index.index import Index

    silence_library(quiet)
    settings = settings_from_flags(
        ctx, index=index, encoder=encoder, batch_size=batch_size, device=device, max_megapixels=max_megapixels
    )
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise ScanError(f"no such file or folder: {', '.join(missing)}")
    resolve_device(settings.device, origin=settings.origin("device"))
    idx = Index.open(
        settings.index, create=True, encoder=settings.encoder, device=settings.device, notify=notice(quiet)
    )
    err = stderr_console()
    if not quiet:
        err.print(f"index {escape(str(idx.root))} · encoder {idx.encoder_spec} on {idx.encoder.device}", style="dim")
    with stop_on_interrupt() as should_stop, progress_bar(quiet) as progress:
        report = idx.add(
            paths,
            excludes=tuple(exclude or ()),
            include_hidden=include_hidden,
            batch_size=settings.batch_size,
            loader_threads=settings.loader_threads,
            max_megapixels=settings.max_megapixels,
            max_text_bytes=settings.max_text_bytes,
            progress=progress,
            should_stop=should_stop,
        )
    if json_out:
        print_json({"schema": "retrv.build/1", "index": str(idx.root), "encoder": idx.encoder_spec, **report.to_dict()})
    else:
        print(
            f"added {report.added}, updated {report.updated}, reused {report.reused}, "
            f"removed {report.removed}, unchanged {report.unchanged}, skipped {len(report.skipped)}"
        )
        reasons = report.skipped_by_reason()
        if reasons and not quiet:
            err.print("skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())), style="yellow")
        if verbose:
            for skip in report.skipped:
                err.print(f"  skipped {skip.path}: {skip.reason}", markup=False)
        elif report.skipped and not quiet:
            err.print("  (--verbose lists them)", style="dim")
    if report.stopped:
        if not quiet:
            err.print("stopped: the next build-index picks up where this one stopped", style="yellow")
        raise typer.Exit(130)
