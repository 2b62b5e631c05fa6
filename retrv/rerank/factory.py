"""One front door for stage 2: a mode name and a reasoner spec in, a ready `Reranker` out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from retrv.errors import RetrvError

if TYPE_CHECKING:
    from retrv.index.index import Index
    from retrv.rerank.base import Reranker

RERANK_MODES = ("none", "score", "reason")


def make_reranker(
    mode: str,
    reasoner: str | None = None,
    *,
    index: Index | None = None,
    device: str = "auto",
    fusion_weight: float = 1.0,
    max_inspections: int = 5,
    max_new_tokens: int = 512,
    use_icm: bool = True,
    force_answer: bool = False,
    trust_remote_code: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Reranker | None:
    """`score`: any instruct VLM, training-free. `reason`: a retrv reasoner checkpoint (ICM + DIM).

    In `reason` mode the reranker reads precomputed ICM rows from the index's `icm_<checkpoint>` table
    when `retrv compress` has written it (the engine passes them on); otherwise tokens are computed
    at search time and `notify` says how to make that faster.
    """
    from retrv.rerank.checkpoint import DEFAULT_REASONER, load_reasoner

    if mode not in RERANK_MODES:
        raise RetrvError(f"unknown rerank mode {mode!r}; expected one of {', '.join(RERANK_MODES)}")
    if mode == "none":
        return None
    spec = reasoner or DEFAULT_REASONER
    if mode == "score":
        from retrv.rerank.scorer import Scorer

        loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code)
        _say(notify, f"reasoner {spec} on {loaded.device} ({loaded.device_reason})")
        return Scorer(loaded, fusion_weight=fusion_weight)
    from retrv.index.compress import icm_table_name
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    options = ReasonerOptions(
        max_new_tokens=max_new_tokens, max_inspections=max_inspections, use_icm=use_icm, force_answer=force_answer
    )
    loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code, require_icm=use_icm)
    _say(notify, f"reasoner {spec} on {loaded.device} ({loaded.device_reason})")
    reranker = Reasoner.from_loaded(loaded, options)
    reranker.side_table = icm_table_name(loaded.checkpoint_id) if use_icm else None  # type: ignore[attr-defined]
    if index is not None and use_icm and reranker.side_table not in index.store.side_tables():  # type: ignore[attr-defined]
        _say(
            notify,
            f"no precomputed ICM tokens for this reasoner in {index.root}; computing them per query "
            f"(run `retrv compress --index {index.root} --reasoner {spec}` once to make search faster)",
        )
    return reranker


def _say(notify: Callable[[str], None] | None, message: str) -> None:
    if notify is not None:
        notify(message)
