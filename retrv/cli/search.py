"""`retrv search QUERY`: text, image or composed queries; coarse top-K, then optional reranking."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import (
    DEVICE_HELP,
    FORCE_ANSWER_HELP,
    INDEX_HELP,
    handle_errors,
    notice,
    print_json,
    stderr_console,
)


class RerankMode(str, Enum):
    none = "none"
    score = "score"
    reason = "reason"


@handle_errors
def search(
    query: Annotated[
        str | None, typer.Argument(help="Words to search for, or the path of an image.", show_default=False)
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Query image (with QUERY: a composed image+text query).")
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Number of results.")] = 10,
    index: Annotated[str | None, typer.Option("--index", "-i", help=INDEX_HELP)] = None,
    add: Annotated[
        list[str] | None, typer.Option("--add", help="Add a text or image path to the query vector (repeatable).")
    ] = None,
    subtract: Annotated[
        list[str] | None,
        typer.Option("--subtract", help="Subtract a text or image path from the query vector (repeatable)."),
    ] = None,
    rerank: Annotated[
        RerankMode | None,
        typer.Option(
            help="Stage 2: none, score (training-free) or reason (Retrv-R1). Default: score with a reasoner, else none. [env: RETRV_RERANK]"
        ),
    ] = None,
    no_rerank: Annotated[bool, typer.Option("--no-rerank", help="Same as --rerank none.")] = False,
    reasoner: Annotated[
        str | None,
        typer.Option(
            help="Reasoner: Hugging Face id or local dir (a retrv checkpoint for reason mode). [env: RETRV_REASONER]"
        ),
    ] = None,
    rerank_k: Annotated[
        int | None, typer.Option(help="How many coarse candidates the reranker sees. [env: RETRV_RERANK_K]")
    ] = None,
    fusion_weight: Annotated[
        float | None, typer.Option(help="score mode: final = coarse + w * P(yes). [env: RETRV_FUSION_WEIGHT]")
    ] = None,
    max_inspections: Annotated[
        int | None, typer.Option(help="reason mode: cap on detail inspections. [env: RETRV_MAX_INSPECTIONS]")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            help="reason mode: cap on generated tokens (then the coarse order stands, or see --force-answer). [env: RETRV_MAX_NEW_TOKENS]"
        ),
    ] = None,
    force_answer: Annotated[bool, typer.Option("--force-answer/--no-force-answer", help=FORCE_ANSWER_HELP)] = False,
    min_score: Annotated[
        float | None,
        typer.Option(
            help="Drop results below this score (reranker probability, else cosine); says 'no match' when none is left."
        ),
    ] = None,
    show_reasoning: Annotated[
        bool, typer.Option("--show-reasoning", help="Print the reasoner's reasoning (inspected candidates marked).")
    ] = False,
    encoder: Annotated[
        str | None, typer.Option(help="Refuse to search unless the index was built with this encoder.")
    ] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (off by default).")
    ] = False,
    paths_only: Annotated[
        bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line (for xargs).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (schema retrv.search/1, docs/cli.md).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notices on stderr.")] = False,
) -> None:
    """Search an index with words, an image, or both."""
    from retrv.config import load_settings
    from retrv.engine import Engine
    from retrv.index.index import Index, looks_like_image_path, split_modalities
    from retrv.items import Query

    settings = load_settings(
        dict(
            index=index,
            device=device,
            reasoner=reasoner,
            rerank_k=rerank_k,
            fusion_weight=fusion_weight,
            max_inspections=max_inspections,
            max_new_tokens=max_new_tokens,
            rerank=(rerank.value if rerank else None),
        )
    )
    if query is None and image is None:
        raise ValueError("give a QUERY (words or an image path) or --image PATH")
    if image is not None and not image.is_file():
        raise FileNotFoundError(f"query image not found: {image}")
    if query is not None and image is None and looks_like_image_path(query):
        q = Query(image=query)
    else:
        q = Query(text=query or None, image=image)
    q.add, q.subtract = split_modalities(add or []), split_modalities(subtract or [])

    mode = "none" if no_rerank else (settings.rerank or ("score" if settings.reasoner else "none"))
    idx = Index.open(
        settings.index,
        encoder=encoder or "auto",
        device=settings.device,
        exact_max=settings.exact_search_max,
        notify=notice(quiet),
    )
    reranker = None
    if mode != "none":
        from retrv.rerank.factory import make_reranker

        reranker = make_reranker(
            mode,
            settings.reasoner,
            index=idx,
            device=settings.device,
            fusion_weight=settings.fusion_weight,
            max_inspections=settings.max_inspections,
            max_new_tokens=settings.max_new_tokens,
            force_answer=force_answer,
            trust_remote_code=trust_remote_code,
            notify=notice(quiet),
        )
    engine = Engine(idx, reranker, rerank_k=settings.rerank_k, min_score=min_score)
    ranking = engine.search(q, k=k)
    if json_out:
        print_json(
            {"schema": "retrv.search/1", "index": str(idx.root), "encoder": idx.store.meta.encoder, **ranking.to_dict()}
        )
        return
    from retrv.cli.render import render_ranking

    if show_reasoning and paths_only and ranking.reasoning and not quiet:
        stderr_console().print(ranking.reasoning, markup=False)
    render_ranking(ranking, paths_only=paths_only, show_reasoning=show_reasoning and not paths_only)
