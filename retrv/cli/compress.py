"""`retrv compress`: precompute every item's ICM content and memory tokens for a reasoner."""

from __future__ import annotations

from typing import Annotated

import typer

from retrv.cli.common import (
    DeviceOption,
    IndexOption,
    JsonOption,
    QuietOption,
    ReasonerOption,
    StorageOptionsOption,
    TrustRemoteCodeOption,
    handle_errors,
    notice,
    print_json,
    progress_bar,
    settings_from_flags,
    silence_library,
    stop_on_interrupt,
)


@handle_errors
def compress(
    ctx: typer.Context,
    reasoner: ReasonerOption = None,
    index: IndexOption = None,
    storage_options: StorageOptionsOption = None,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Items per batch (one table write each).")] = 8,
    drop_stale: Annotated[
        bool, typer.Option("--drop-stale", help="Delete the ICM tables of other checkpoints.")
    ] = False,
    device: DeviceOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    quiet: QuietOption = False,
    json_out: JsonOption = False,
) -> None:
    """Precompute the reasoner's compressed tokens for every item (incremental; Ctrl-C keeps finished batches).
    The reasoner is a retrv checkpoint with ICM weights (retrv train icm or later)."""
    from dataclasses import asdict

    from retrv.devices import resolve_device
    from retrv.errors import UsageError
    from retrv.index.index import Index
    from retrv.precomputed import compress_index
    from retrv.rerank.reasoner import Reasoner

    silence_library(quiet)
    settings = settings_from_flags(ctx, index=index, device=device, reasoner=reasoner, storage_options=storage_options)
    if not settings.reasoner:
        raise UsageError("--reasoner is required: the checkpoint whose tokens to precompute")
    resolve_device(settings.device, origin=settings.origin("device"))
    idx = Index.from_settings(settings)
    model = Reasoner.load(settings.reasoner, device=settings.device, trust_remote_code=trust_remote_code)
    notice(quiet)(f"reasoner {settings.reasoner} on {model.device}")
    with stop_on_interrupt() as should_stop, progress_bar(quiet) as progress:
        report = compress_index(
            idx.store, model, batch_size=batch_size, progress=progress, should_stop=should_stop, drop_stale=drop_stale
        )
    if json_out:
        print_json({"schema": "retrv.compress/1", "index": str(idx.root), **asdict(report)})
    else:
        print(
            f"{report.table}: computed {report.computed}, unchanged {report.unchanged}, removed {report.removed}, "
            f"failed {len(report.failed)}"
        )
        for item_id, why in report.failed:
            print(f"  failed {item_id}: {why}")
    if report.interrupted:
        raise typer.Exit(130)
