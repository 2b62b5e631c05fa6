"""`retrv bench mbeir DIR`: recall per task and cost, on an M-BEIR-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import DEVICE_HELP, FORCE_ANSWER_HELP, handle_errors, notice, progress_bar, stdout_console
from retrv.cli.search import RerankMode

app = typer.Typer(help="Benchmarks: recall and cost of the engine on a dataset.", no_args_is_help=True)


@app.command("mbeir")
@handle_errors
def mbeir(
    data: Annotated[
        Path, typer.Argument(help="Dataset root in UniIR's M-BEIR layout (or one from `retrv data synth`).")
    ],
    tasks: Annotated[str | None, typer.Option(help="Comma-separated task ids or dataset names (default: all).")] = None,
    split: Annotated[str, typer.Option(help="Query split.")] = "test",
    pool: Annotated[str, typer.Option(help="Candidate pool: local (per dataset) or global (union).")] = "local",
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Depth of each ranking.")] = 50,
    rerank: Annotated[RerankMode, typer.Option(help="Stage 2: none, score or reason.")] = RerankMode.none,
    encoder: Annotated[str, typer.Option(help="Encoder spec (auto, clip:..., text:..., lite).")] = "auto",
    reasoner: Annotated[str | None, typer.Option(help="Reasoner spec for --rerank score|reason.")] = None,
    rerank_k: Annotated[int, typer.Option(help="Candidates the reranker sees.")] = 50,
    max_inspections: Annotated[int, typer.Option(help="reason mode: cap on detail inspections.")] = 5,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            min=1, help="reason mode: cap on generated tokens (then the coarse order stands, or see --force-answer)."
        ),
    ] = 512,
    no_icm: Annotated[
        bool,
        typer.Option("--no-icm", help="reason mode: every candidate's full tokens instead of 2 ICM tokens (ablation)."),
    ] = False,
    force_answer: Annotated[bool, typer.Option("--force-answer/--no-force-answer", help=FORCE_ANSWER_HELP)] = False,
    instructions: Annotated[
        bool, typer.Option("--instructions/--no-instructions", help="Prefix queries with UniIR's task instructions.")
    ] = True,
    limit: Annotated[int | None, typer.Option(help="At most this many queries per dataset.")] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the full result as JSON to this file.")
    ] = None,
    run: Annotated[
        Path | None, typer.Option("--run", help="TREC run file; an interrupted bench resumes from it.")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw per-task recall and cost to this PNG.")] = None,
    index_dir: Annotated[
        Path | None, typer.Option(help="Where pool indices are kept (default: user data dir).")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notices.")] = False,
) -> None:
    """Run the engine over every query and report Recall@1/5/10 per task (R@5 headline; R@10 for
    Fashion200K and FashionIQ), the average, and the cost per query."""
    import json

    from retrv.bench.report import cost_rows, table_rows
    from retrv.bench.run import BenchConfig, run_mbeir

    if pool not in ("local", "global"):
        raise ValueError("--pool is local or global")
    config = BenchConfig(
        data=data,
        split=split,
        datasets=[t.strip() for t in tasks.split(",")] if tasks else None,
        pool=pool,
        k=k,
        rerank=rerank.value,
        encoder=encoder,
        reasoner=reasoner,
        instructions=instructions,
        limit=limit,
        run_file=run,
        index_dir=index_dir,
        device=device,
        rerank_k=rerank_k,
        max_inspections=max_inspections,
        max_new_tokens=max_new_tokens,
        use_icm=not no_icm,
        force_answer=force_answer,
    )
    with progress_bar(quiet) as progress:
        result = run_mbeir(config, progress=progress, notify=notice(quiet))
    if json_file is not None:
        json_file.write_text(json.dumps({"schema": "retrv.bench/1", **result.to_dict()}, indent=2) + "\n")
    if plot is not None:
        from retrv.bench.report import plot as draw

        draw(result, plot)
    from rich.table import Table

    header, rows = table_rows(result)
    table = Table(*header, title=f"M-BEIR {split} · pool {pool} · rerank {rerank.value}", header_style="bold")
    for row in rows:
        table.add_row(*row)
    console = stdout_console()
    console.print(table)
    for name, value in cost_rows(result):
        console.print(f"{name:>26}  {value}", markup=False)
    if result.queries_resumed:
        console.print(f"{result.queries_resumed} queries resumed from {run}", markup=False)
