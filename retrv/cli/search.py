"""`retrv search QUERY`: text, image or composed queries; coarse top-K, then optional reranking."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import (
    FORCE_ANSWER_HELP,
    AnnMemoryOption,
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
    settings_from_flags,
    silence_library,
    warn,
)


class RerankMode(str, Enum):
    none = "none"
    score = "score"
    reason = "reason"


@handle_errors
def search(
    ctx: typer.Context,
    query: Annotated[
        str | None,
        typer.Argument(metavar="QUERY", help="Words to search for, or the path of an image.", show_default=False),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", metavar="PATH", help="Query image (with QUERY: a composed image+text query)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Number of results.")] = 10,
    index: IndexOption = None,
    add: Annotated[
        list[str] | None,
        typer.Option("--add", metavar="TEXT|IMAGE", help="Add words or an image to the query vector (repeatable)."),
    ] = None,
    subtract: Annotated[
        list[str] | None,
        typer.Option(
            "--subtract", metavar="TEXT|IMAGE", help="Subtract words or an image from the query vector (repeatable)."
        ),
    ] = None,
    rerank: Annotated[
        RerankMode | None,
        typer.Option(
            envvar="RETRV_RERANK",
            help="Stage 2: none, score (training-free) or reason (Retrv-R1). Default: score with a reasoner, else none.",
        ),
    ] = None,
    no_rerank: Annotated[bool, typer.Option("--no-rerank", help="Same as --rerank none.")] = False,
    reasoner: ReasonerOption = None,
    rerank_k: Annotated[
        int | None,
        typer.Option(metavar="N", envvar="RETRV_RERANK_K", help="How many coarse candidates the reranker sees."),
    ] = None,
    fusion_weight: Annotated[
        float | None,
        typer.Option(metavar="W", envvar="RETRV_FUSION_WEIGHT", help="score mode: final = coarse + W * P(yes)."),
    ] = None,
    max_inspections: Annotated[
        int | None,
        typer.Option(metavar="N", envvar="RETRV_MAX_INSPECTIONS", help="reason mode: cap on detail inspections."),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            envvar="RETRV_MAX_NEW_TOKENS",
            help="reason mode: cap on generated tokens (then the coarse order stands, or see --force-answer).",
        ),
    ] = None,
    force_answer: Annotated[bool, typer.Option("--force-answer", help=FORCE_ANSWER_HELP)] = False,
    min_score: Annotated[
        float | None,
        typer.Option(
            metavar="S",
            help="Drop results below S: P(yes) in score mode, the coarse cosine otherwise (reason mode's pick is not "
            "a score); says 'no match' when none is left.",
        ),
    ] = None,
    show_reasoning: Annotated[
        bool, typer.Option("--show-reasoning", help="Print the reasoner's reasoning (inspected candidates marked).")
    ] = False,
    encoder: Annotated[
        str | None,
        typer.Option(metavar="SPEC", help="Refuse to search unless the index was built with this encoder."),
    ] = None,
    device: DeviceOption = None,
    storage_options: StorageOptionsOption = None,
    ann_memory: AnnMemoryOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    paths_only: Annotated[
        bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line (for xargs).")
    ] = False,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="Print only paths, each ended by a NUL byte (for xargs -0).")
    ] = False,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Search an index with words, an image, or both."""
    import dataclasses

    from retrv.cli.render import render_ranking, report_on_stderr
    from retrv.engine import Engine
    from retrv.items import parse_query

    silence_library(quiet)
    settings = settings_from_flags(
        ctx,
        index=index,
        device=device,
        reasoner=reasoner,
        rerank_k=rerank_k,
        fusion_weight=fusion_weight,
        max_inspections=max_inspections,
        max_new_tokens=max_new_tokens,
        rerank=rerank,
        storage_options=storage_options,
        ann_memory=ann_memory,
    )
    if no_rerank:
        settings = dataclasses.replace(settings, rerank="none")
    q = parse_query(query, image, add=add or [], subtract=subtract or [], warn=warn)
    engine = Engine.from_settings(
        settings,
        encoder=encoder,
        min_score=min_score,
        force_answer=force_answer,
        trust_remote_code=trust_remote_code,
        notify=notice(quiet),
    )
    ranking = engine.search(q, k=k)
    report_on_stderr(ranking, quiet=quiet)
    if json_out:
        print_json(
            {
                "schema": "retrv.search/1",
                "index": str(engine.index.root),
                "encoder": engine.index.encoder_spec,
                **ranking.to_dict(),
            }
        )
        return
    render_ranking(ranking, paths_only=paths_only, null=null, show_reasoning=show_reasoning, quiet=quiet)
