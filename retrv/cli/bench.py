"""`retrv bench mbeir DIR`: recall per task and cost, on an M-BEIR-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from retrv.cli.common import (
    CandidateTokensOption,
    DeviceOption,
    EncoderOption,
    ForceAnswerOption,
    FusionWeightOption,
    GlanceImageTokensOption,
    GlanceTextTokensOption,
    JsonOption,
    MaxInspectionsOption,
    MaxNewTokensOption,
    QuietOption,
    RayAddressOption,
    RayOption,
    RayWorkersOption,
    ReasonerOption,
    RerankKOption,
    RerankMode,
    ScoreStyleOption,
    VisualRetracingOption,
    handle_errors,
    notice,
    print_json,
    progress_bar,
    ray_cluster,
    settings_from_flags,
    silence_library,
    stage2_settings,
    stdout_console,
)

if TYPE_CHECKING:
    from retrv.index.build import EncodeStep
    from retrv.index.distributed import RayCluster

app = typer.Typer(help="Benchmarks: recall and cost of the engine on a dataset.", no_args_is_help=True)


def _ray_encode_step(cluster: RayCluster | None) -> EncodeStep | None:
    if cluster is None:
        return None
    from retrv.index.distributed import ray_encode_step

    return ray_encode_step(cluster)


@app.command("mbeir")
@handle_errors
def mbeir(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Dataset root in UniIR's M-BEIR layout (or one from `retrv data synth`)."),
    ],
    tasks: Annotated[
        str | None, typer.Option(metavar="IDS", help="Comma-separated task ids or dataset names (default: all).")
    ] = None,
    split: Annotated[str, typer.Option(metavar="SPLIT", help="Query split.")] = "test",
    pool: Annotated[
        str, typer.Option(metavar="POOL", help="Candidate pool: local (per dataset) or global (union).")
    ] = "local",
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Depth of each ranking.")] = 50,
    rerank: Annotated[
        RerankMode | None,
        typer.Option(
            envvar="RETRV_RERANK", help="Stage 2: none, score or reason. Default: score with a reasoner, else none."
        ),
    ] = None,
    encoder: EncoderOption = None,
    reasoner: ReasonerOption = None,
    rerank_k: RerankKOption = None,
    fusion_weight: FusionWeightOption = None,
    max_inspections: MaxInspectionsOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    candidate_tokens: CandidateTokensOption = None,
    no_icm: Annotated[bool, typer.Option("--no-icm", hidden=True, help="Same as --candidate-tokens full.")] = False,
    glance_image_tokens: GlanceImageTokensOption = None,
    glance_text_tokens: GlanceTextTokensOption = None,
    score_style: ScoreStyleOption = None,
    visual_retracing: VisualRetracingOption = None,
    force_answer: ForceAnswerOption = False,
    instructions: Annotated[
        bool, typer.Option("--instructions/--no-instructions", help="Prefix queries with UniIR's task instructions.")
    ] = True,
    limit: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="At most this many queries per dataset.")
    ] = None,
    json_out: JsonOption = False,
    run: Annotated[
        Path | None,
        typer.Option("--run", metavar="FILE", help="TREC run file; an interrupted bench resumes from it."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="PNG", help="Draw per-task recall and cost to this PNG.")
    ] = None,
    index_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Where pool indices are kept (default: user data dir).")
    ] = None,
    device: DeviceOption = None,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    ray_workers: RayWorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run the engine over every query and report Recall@1/5/10 per task (R@5 headline; R@10 for
    Fashion200K and FashionIQ), the average, and the cost per query."""
    from retrv.bench.report import cost_rows, table_rows
    from retrv.bench.run import BenchConfig, run_mbeir
    from retrv.errors import UsageError

    silence_library(quiet)
    if plot is not None:
        from retrv.bench.report import require_matplotlib

        require_matplotlib()  # before the run, not after it
    if pool not in ("local", "global"):
        raise UsageError(f"--pool is local or global, got {pool!r}")
    settings = settings_from_flags(
        ctx,
        encoder=encoder,
        device=device,
        **{**stage2_settings(ctx), "candidate_tokens": "full" if no_icm else candidate_tokens},
    )
    config = BenchConfig(
        data=data,
        split=split,
        datasets=[t.strip() for t in tasks.split(",")] if tasks else None,
        pool=pool,
        k=k,
        instructions=instructions,
        limit=limit,
        run_file=run,
        index_dir=index_dir,
        force_answer=force_answer,
        encode=_ray_encode_step(ray_cluster(ray, ray_address, ray_workers)),
    )
    with progress_bar(quiet) as progress:
        result = run_mbeir(config, settings, progress=progress, notify=notice(quiet))
    if plot is not None:
        from retrv.bench.report import plot as draw

        draw(result, plot)
    if json_out:
        print_json({"schema": "retrv.bench/1", **result.to_dict()})
        return
    from rich.table import Table

    header, rows = table_rows(result)
    mode = result.config["rerank"]
    table = Table(*header, title=f"M-BEIR {split} · pool {pool} · rerank {mode}", header_style="bold")
    for row in rows:
        table.add_row(*row)
    console = stdout_console()
    console.print(table)
    for name, value in cost_rows(result):
        console.print(f"{name:>26}  {value}", markup=False)
    if result.queries_resumed:
        console.print(f"{result.queries_resumed} queries resumed from {run}", markup=False)
