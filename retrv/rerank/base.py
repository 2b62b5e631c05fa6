"""The stage-2 protocol: a reranker resolves the coarse top-K of one query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from retrv.items import Item, Query

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Candidate:
    """One coarse hit handed to a reranker: the stored item, its coarse score, and its precomputed row.

    `precomputed` is the row the index holds for this reranker (`Reranker.precomputed_table`; for `reason`
    mode the ICM content and memory tokens), column name -> array, when the engine found a current one.
    """

    item: Item
    coarse_score: float
    precomputed: dict[str, np.ndarray] | None = None


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
    candidate_tokens: str | None = None  # reason mode: how the candidates entered the prompt (icm, glance, full)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Reranker(Protocol):
    @property
    def mode(self) -> str:
        """ "score" | "reason"."""

    @property
    def calibrated(self) -> bool:
        """Its rerank scores are probabilities a threshold (--min-score) can be set on."""

    @property
    def precomputed_table(self) -> str | None:
        """The index side table of per-item rows it reads (None: it reads none); see `retrv.precomputed`."""

    def rerank(self, query: Query, candidates: list[Candidate]) -> RerankResult: ...


@runtime_checkable
class Precomputing(Reranker, Protocol):
    """A reranker whose per-item rows can be computed ahead of search (`retrv compress`)."""

    def precompute(self, items: list[Item]) -> dict[str, np.ndarray]:
        """Column name -> (len(items), ...) array: the rows of `items`, in order; FeatureError for a bad item."""
        ...
