"""One front door for stage 2: a mode name, a reasoner spec and the mode's options in, a ready `Reranker` out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from retrv.config import RERANK_MODES
from retrv.errors import UsageError

if TYPE_CHECKING:
    from retrv.rerank.base import Reranker
    from retrv.rerank.checkpoint import LoadedReasoner
    from retrv.rerank.reasoner import ReasonerOptions
    from retrv.rerank.retracing import RetracingConfig


def make_reranker(
    mode: str,
    reasoner: str | None = None,
    *,
    device: str = "auto",
    fusion_weight: float = 1.0,
    score_style: str = "lamra",
    retracing: RetracingConfig | None = None,
    reason: ReasonerOptions | None = None,
    trust_remote_code: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Reranker | None:
    """`score`: any instruct VLM, training-free (`score_style` lamra or retllm, optionally with visual
    `retracing`). `reason`: a Qwen-VL-family instruct VLM with glance tokens, or a retrv checkpoint with ICM tokens
    (`reason.candidate_tokens`), with detail inspection. `notify` hears which device the reasoner runs on."""
    from retrv.config import DEFAULT_REASONER
    from retrv.rerank.checkpoint import load_reasoner

    if mode not in RERANK_MODES:
        raise UsageError(f"unknown rerank mode {mode!r}; expected one of {', '.join(RERANK_MODES)}")
    if mode == "none":
        return None
    spec = reasoner or DEFAULT_REASONER
    if mode == "score":
        from retrv.rerank.scorer import Scorer

        loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code)
        _announce(notify, spec, loaded)
        return Scorer(loaded, style=score_style, fusion_weight=fusion_weight, retracing=retracing)
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    options = reason or ReasonerOptions()
    require_icm = options.candidate_tokens == "icm"
    loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code, require_icm=require_icm)
    _announce(notify, spec, loaded)
    return Reasoner.from_loaded(loaded, options)


def _announce(notify: Callable[[str], None] | None, spec: str, loaded: LoadedReasoner) -> None:
    from retrv.rerank.checkpoint import reference_kernels_note

    kernels = reference_kernels_note(loaded)
    _say(notify, f"reasoner {spec} on {loaded.device} ({loaded.device_reason})" + (f"; {kernels}" if kernels else ""))


def _say(notify: Callable[[str], None] | None, message: str) -> None:
    if notify is not None:
        notify(message)
