"""`retrv compress`: precompute every item's ICM content and memory tokens for a reasoner."""

from __future__ import annotations

from typing import Annotated

import typer

from retrv.cli.common import DEVICE_HELP, INDEX_HELP, handle_errors, notice, print_json, progress_bar


@handle_errors
def compress(
    reasoner: Annotated[
        str, typer.Option(help="Reasoner checkpoint (a directory with retrv-reasoner.json and icm.safetensors).")
    ],
    index: Annotated[str | None, typer.Option("--index", "-i", help=INDEX_HELP)] = None,
    batch_size: Annotated[int, typer.Option(help="Items per batch (one table write each).")] = 8,
    drop_stale: Annotated[bool, typer.Option("--drop-stale", help="Delete ICM tables of other checkpoints.")] = False,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow model code from the hub.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notices.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (schema retrv.compress/1).")
    ] = False,
) -> None:
    """Precompute the reasoner's compressed tokens for every item (incremental; Ctrl-C keeps finished batches)."""
    from dataclasses import asdict

    from retrv.config import load_settings
    from retrv.index.compress import compress_index
    from retrv.index.index import Index
    from retrv.rerank.checkpoint import load_reasoner

    settings = load_settings(dict(index=index, device=device))
    idx = Index.open(settings.index)
    loaded = load_reasoner(reasoner, device=settings.device, trust_remote_code=trust_remote_code, require_icm=True)
    notice(quiet)(f"reasoner {reasoner} on {loaded.device} ({loaded.device_reason})")
    with progress_bar(quiet) as progress:
        report = compress_index(idx.store, loaded, batch_size=batch_size, progress=progress, drop_stale=drop_stale)
    if json_out:
        data = {k: v for k, v in asdict(report).items()}
        print_json({"schema": "retrv.compress/1", "index": str(idx.root), **data})
        return
    print(
        f"{report.table}: computed {report.computed}, unchanged {report.unchanged}, removed {report.removed}, "
        f"failed {len(report.failed)}"
    )
    for item_id, why in report.failed:
        print(f"  failed {item_id}: {why}")
