"""The one place where the stages meet: coarse top-K from the index, then an optional reranker."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from retrv.items import Hit, Query, Ranking

if TYPE_CHECKING:
    from retrv.index.index import Index
    from retrv.rerank.base import Reranker, RerankResult


class Engine:
    """`Engine(index, reranker).search(query, k)` -> Ranking.

    The reranker sees the coarse top-`rerank_k` (at least `k`); candidates beyond it keep coarse order
    below the reranked ones. `min_score` filters the final list on the reranker's score (its
    probability in `score` mode) or, without one, on the coarse cosine; when nothing reaches it the
    ranking is empty and `no_match` is set.
    """

    def __init__(
        self, index: Index, reranker: Reranker | None = None, *, rerank_k: int = 50, min_score: float | None = None
    ) -> None:
        self.index = index
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.min_score = min_score

    def search(self, query: Query | str, k: int = 10) -> Ranking:
        query = Query(text=query) if isinstance(query, str) else query
        if k < 1:
            raise ValueError("k must be at least 1")
        started = time.perf_counter()
        depth = max(k, self.rerank_k) if self.reranker is not None else k
        items, scores = self.index.coarse(query, depth)
        latency = {"coarse": (time.perf_counter() - started) * 1000}
        ranking = Ranking(query=query, hits=[], rerank="none", latency_ms=latency)
        if self.reranker is None or not items:
            hits = [_hit(item, score, score) for item, score in zip(items, scores)]
        else:
            rerank_started = time.perf_counter()
            hits = self._rerank(query, items, scores, ranking)
            latency["rerank"] = (time.perf_counter() - rerank_started) * 1000
        if self.min_score is not None:
            hits = [h for h in hits if _threshold_score(h) >= self.min_score]
            ranking.no_match = not hits
        ranking.hits = hits[:k]
        for rank, hit in enumerate(ranking.hits, 1):
            hit.rank = rank
        latency["total"] = (time.perf_counter() - started) * 1000
        return ranking

    def _rerank(self, query: Query, items: list, scores: list[float], ranking: Ranking) -> list[Hit]:
        from retrv.rerank.base import Candidate

        assert self.reranker is not None
        head = min(len(items), self.rerank_k)
        candidates = [Candidate(item, score) for item, score in zip(items[:head], scores[:head])]
        side_table = getattr(self.reranker, "side_table", None)
        if side_table and side_table in self.index.store.side_tables():
            import numpy as np

            from retrv.index.compress import item_fingerprint

            rows = self.index.store.side_get(side_table, [c.item.id for c in candidates])
            for c in candidates:
                row = rows.get(c.item.id)
                # a row written before the item changed is stale: the reranker recomputes it instead
                if row is not None and np.array_equal(row.get("fingerprint"), item_fingerprint(c.item)):
                    c.extras["icm"] = row
        result: RerankResult = self.reranker.rerank(query, candidates)
        ranking.rerank = self.reranker.mode
        ranking.reasoning = result.reasoning
        ranking.inspected = list(result.inspected)
        ranking.fallback = result.fallback
        ranking.forced_answer = result.forced_answer
        ranking.prompt_tokens = result.prompt_tokens
        ranking.generated_tokens = result.generated_tokens
        ranking.latency_ms.update({f"rerank.{name}": ms for name, ms in result.latency_ms.items()})
        hits = []
        for position in result.order:
            c = candidates[position]
            hits.append(
                _hit(
                    c.item,
                    result.scores[position],
                    c.coarse_score,
                    rerank_score=result.rerank_scores[position],
                    confidence=result.confidences[position],
                    chosen=position == result.chosen,
                    inspected=position in result.inspected,
                )
            )
        hits += [_hit(item, score, score) for item, score in zip(items[head:], scores[head:])]
        return hits


def _hit(item, score: float, coarse: float, **extra) -> Hit:
    from retrv.index.index import hit_from_item

    hit = hit_from_item(0, item, coarse, **extra)
    hit.score = score
    return hit


def _threshold_score(hit: Hit) -> float:
    return hit.rerank_score if hit.rerank_score is not None else hit.coarse_score
