"""One front door for stage 2: a mode name and a reasoner spec in, a ready `Reranker` out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from retrv.config import RERANK_MODES
from retrv.errors import UsageError

if TYPE_CHECKING:
    from retrv.rerank.base import Reranker


def make_reranker(
    mode: str,
    reasoner: str | None = None,
    *,
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

    `notify` hears which device the reasoner runs on and why.
    """
    from retrv.rerank.checkpoint import DEFAULT_REASONER, load_reasoner

    if mode not in RERANK_MODES:
        raise UsageError(f"unknown rerank mode {mode!r}; expected one of {', '.join(RERANK_MODES)}")
    if mode == "none":
        return None
    spec = reasoner or DEFAULT_REASONER
    if mode == "score":
        from retrv.rerank.scorer import Scorer

        loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code)
        _say(notify, f"reasoner {spec} on {loaded.device} ({loaded.device_reason})")
        return Scorer(loaded, fusion_weight=fusion_weight)
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    options = ReasonerOptions(
        max_new_tokens=max_new_tokens, max_inspections=max_inspections, use_icm=use_icm, force_answer=force_answer
    )
    loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code, require_icm=use_icm)
    _say(notify, f"reasoner {spec} on {loaded.device} ({loaded.device_reason})")
    return Reasoner.from_loaded(loaded, options)


def _say(notify: Callable[[str], None] | None, message: str) -> None:
    if notify is not None:
        notify(message)
