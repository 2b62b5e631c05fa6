"""`retrv build-index PATH...`: add folders and files to an index, incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from retrv.cli.common import (
    AnnMemoryOption,
    DeviceOption,
    EncoderOption,
    IndexOption,
    JsonOption,
    QuietOption,
    RayAddressOption,
    RayOption,
    RayWorkersOption,
    StorageOptionsOption,
    escape,
    handle_errors,
    notice,
    print_json,
    progress_bar,
    ray_cluster,
    settings_from_flags,
    silence_library,
    stderr_console,
    stop_on_interrupt,
)
from retrv.items import display_text

if TYPE_CHECKING:
    from retrv.index.build import BuildReport


def confirm_removal(report: BuildReport, *, quiet: bool) -> bool:
    """Ask on a terminal whether to remove what a build held back; never asks a script."""
    import sys

    if quiet or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sample = ", ".join(display_text(source) for source, _ in report.held_back[:3])
    stderr_console().print(f"{escape(report.held_back_why or '')} (e.g. {escape(sample)}).", style="yellow")
    return typer.confirm(f"Remove these {len(report.held_back)} item(s) from the index?", default=False, err=True)


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
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Remove the items whose files are gone even when they are more than half of the index, or all "
            "under a PATH (without it such a build asks on a terminal, else keeps them and says so).",
        ),
    ] = False,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    ray_workers: RayWorkersOption = None,
    ann_memory: AnnMemoryOption = None,
    storage_options: StorageOptionsOption = None,
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
        ctx,
        index=index,
        encoder=encoder,
        batch_size=batch_size,
        device=device,
        max_megapixels=max_megapixels,
        ann_memory=ann_memory,
        storage_options=storage_options,
    )
    cluster = ray_cluster(ray, ray_address, ray_workers)
    missing = [display_text(str(p)) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise ScanError(f"no such file or folder: {', '.join(missing)}")
    resolve_device(settings.device, origin=settings.origin("device"))
    encode, ann_shards = None, None
    if cluster is not None:  # the encoders and an on-disk ANN's shards run on Ray
        from retrv.index.distributed import ray_encode_step, ray_shard_add

        encode, ann_shards = ray_encode_step(cluster), ray_shard_add(cluster)
    idx = Index.from_settings(
        settings, create=True, encoder=settings.encoder, notify=notice(quiet), ann_shards=ann_shards
    )
    err = stderr_console()
    if not quiet:
        err.print(
            f"index {escape(display_text(str(idx.root)))} · encoder {idx.encoder_spec} on {idx.encoder.device}",
            style="dim",
        )
    with stop_on_interrupt() as should_stop, progress_bar(quiet) as progress:
        report = idx.add(
            paths,
            excludes=tuple(exclude or ()),
            include_hidden=include_hidden,
            batch_size=settings.batch_size,
            loader_threads=settings.loader_threads,
            max_megapixels=settings.max_megapixels,
            max_text_bytes=settings.max_text_bytes,
            prune=prune,
            encode=encode,
            progress=progress,
            should_stop=should_stop,
        )
    if report.held_back and confirm_removal(report, quiet=quiet or json_out):
        report.removed = idx.remove([item_id for _, item_id in report.held_back])
        report.held_back, report.held_back_why = [], None
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
                err.print(f"  skipped {display_text(skip.path)}: {skip.reason}", markup=False)
        elif report.skipped and not quiet:
            err.print("  (--verbose lists them)", style="dim")
    if report.held_back:
        err.print(
            f"kept {len(report.held_back)} item(s) whose files are gone: {escape(report.held_back_why or '')}. "
            "If they are gone for good, run again with --prune.",
            style="yellow",
        )
    if report.stopped:
        if not quiet:
            err.print("stopped: the next build-index picks up where this one stopped", style="yellow")
        raise typer.Exit(130)
