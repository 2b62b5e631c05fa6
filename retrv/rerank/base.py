"""The stage-2 protocol: a reranker resolves the coarse top-K of one query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from retrv.items import Item, Query


@dataclass
class Candidate:
    """One coarse hit handed to a reranker: the stored item, its coarse score, and extras.

    `extras` carries per-reranker precomputed data fetched by the engine (for `reason` mode the
    ICM row: content token and memory tokens), keyed by name.
    """

    item: Item
    coarse_score: float
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class RerankResult:
    """`order` is a permutation of candidate positions, best first; per-candidate lists follow input order."""

    order: list[int]
    scores: list[float]  # the value the final ranking is sorted by (e.g. fused coarse + w*score)
    rerank_scores: list[float | None]
    confidences: list[float | None]
    chosen: int | None = None
    reasoning: str | None = None
    inspected: list[int] = field(default_factory=list)
    fallback: str | None = None
    forced_answer: bool = False  # the reasoner stopped without a usable answer and was made to name one
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Reranker(Protocol):
    mode: str  # "score" | "reason"

    def rerank(self, query: Query, candidates: list[Candidate]) -> RerankResult: ...
