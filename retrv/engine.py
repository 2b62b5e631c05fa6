"""The one place where the stages meet: coarse top-K from the index, then an optional reranker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from retrv.errors import RetrvError
from retrv.items import Hit, Item, Query, Ranking

SEARCH_SCHEMA = "retrv.search/1"

if TYPE_CHECKING:
    from retrv.config import Settings
    from retrv.dedup import Kept
    from retrv.encoders.base import Encoder
    from retrv.index.filters import SearchFilter
    from retrv.index.index import Index
    from retrv.rerank.base import Reranker


def reranker_from_settings(
    settings: Settings,
    *,
    force_answer: bool = False,
    trust_remote_code: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Reranker | None:
    """The reranker `settings` ask for: `rerank` (default: score with a reasoner, else none) over `reasoner`."""
    from retrv.devices import resolve_device
    from retrv.icm.features import GlanceBudget
    from retrv.rerank.factory import make_reranker
    from retrv.rerank.reasoner import ReasonerOptions
    from retrv.rerank.retracing import RetracingConfig

    mode = settings.rerank_mode
    if mode == "none":
        return None
    resolve_device(settings.device, origin=settings.origin("device"))  # fail early, naming where it came from
    reason = ReasonerOptions(
        max_new_tokens=settings.max_new_tokens,
        max_inspections=settings.max_inspections,
        candidate_tokens=settings.candidate_tokens,
        glance=GlanceBudget(settings.glance_image_tokens, settings.glance_text_tokens),
        force_answer=force_answer,
    )
    try:
        return make_reranker(
            mode,
            settings.reasoner,
            device=settings.device,
            fusion_weight=settings.fusion_weight,
            score_style=settings.score_style,
            retracing=RetracingConfig() if settings.visual_retracing else None,
            reason=reason,
            trust_remote_code=trust_remote_code,
            notify=notify,
        )
    except RetrvError as exc:  # a model that cannot do what a setting asks: name where that setting came from
        origin = settings.origin(exc.setting) if exc.setting else "default"
        if not origin.startswith(("--", "default")):  # a flag names itself in the message already
            exc.args = (f"{exc} ({exc.setting} from {origin})", *exc.args[1:])
        raise


class Engine:
    """`Engine(index, reranker).search(query, k)` -> Ranking.

    The reranker sees the coarse top-`rerank_k` (at least `k`); candidates beyond it keep coarse order
    below the reranked ones. `min_score` filters the final list: on the reranker's score where that is a
    calibrated probability (`score` mode: P(yes)), else on the coarse cosine (no reranker, or `reason` mode,
    whose choice is not a score); when nothing reaches it the ranking is empty and `no_match` is set.
    """

    def __init__(
        self, index: Index, reranker: Reranker | None = None, *, rerank_k: int = 50, min_score: float | None = None
    ) -> None:
        self.index = index
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.min_score = min_score

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        encoder: str | Encoder | None = None,
        reranker: Reranker | None = None,
        min_score: float | None = None,
        force_answer: bool = False,
        trust_remote_code: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> Engine:
        """The engine `settings` describe: their index (refused unless built with `encoder`, when given: a spec,
        or a loaded encoder to use) and reranker (`reranker`, when given, is one already loaded: several engines
        may share it). Says through `notify` when reason mode will compute per query what `retrv compress`
        stores."""
        from retrv.devices import resolve_device
        from retrv.index.index import Index

        resolve_device(settings.device, origin=settings.origin("device"))
        index = Index.from_settings(settings, encoder=encoder or "auto", notify=notify)
        if reranker is None:
            reranker = reranker_from_settings(
                settings, force_answer=force_answer, trust_remote_code=trust_remote_code, notify=notify
            )
        table = getattr(reranker, "precomputed_table", None)
        if table and notify is not None and table not in index.store.side_tables():
            notify(
                f"no precomputed tokens for this reasoner in {index.root}; computing them per query "
                f"(run `retrv compress --index {index.root} --reasoner {settings.reasoner}` once to make search faster)"
            )
        return cls(index, reranker, rerank_k=settings.rerank_k, min_score=min_score)

    def document(self, ranking: Ranking) -> dict:
        """The `retrv.search/1` document of `ranking` (docs/cli.md): what `search --json` prints and the server
        answers."""
        header = {"schema": SEARCH_SCHEMA, "index": str(self.index.root), "encoder": self.index.encoder_spec}
        return {**header, **ranking.to_dict()}

    def search(
        self,
        query: Query | str,
        k: int = 10,
        *,
        where: SearchFilter | None = None,
        all_copies: bool = False,
        near_duplicates: float | None = None,
    ) -> Ranking:
        """The best `k` items for `query` among those `where` accepts. Items with the same content hash come back
        once (the best-ranked, the rest in its `copies`) unless `all_copies`; with `near_duplicates` (a cosine
        similarity), items at least that close to a better-ranked one are folded into it too. The coarse stage
        fetches more as copies fold, so that `k` results come back when there are `k` distinct items."""
        from retrv.errors import UsageError
        from retrv.index.filters import SearchFilter

        query = Query(text=query) if isinstance(query, str) else query
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        if near_duplicates is not None and not 0.0 < near_duplicates <= 1.0:
            raise UsageError(f"--dedup is a cosine similarity in (0, 1], got {near_duplicates}")
        if near_duplicates is not None and all_copies:
            raise UsageError("--all-copies keeps every copy and --dedup folds near-duplicates: give one of them")
        started = time.perf_counter()
        if where is not None:
            self.index.check_filter(where)
        depth = max(k, self.rerank_k) if self.reranker is not None else k
        kept = self._candidates(query, depth, where, all_copies, near_duplicates)
        items, scores = [c.item for c in kept], [c.score for c in kept]
        latency = {"coarse": (time.perf_counter() - started) * 1000}
        ranking = Ranking(query=query, hits=[], rerank="none", latency_ms=latency)
        ranking.filters = {**(where or SearchFilter()).to_dict(), "all_copies": all_copies, "dedup": near_duplicates}
        if self.reranker is None or not items:
            hits = [Hit.from_item(item, score) for item, score in zip(items, scores, strict=True)]
        else:
            rerank_started = time.perf_counter()
            hits = self._rerank(query, items, scores, ranking)
            latency["rerank"] = (time.perf_counter() - rerank_started) * 1000
        copies = {c.item.id: [copy.source for copy in c.copies] for c in kept}
        for hit in hits:
            hit.copies = copies[hit.id]
        if self.min_score is not None:
            calibrated = getattr(self.reranker, "calibrated", False) and ranking.fallback is None
            hits = [h for h in hits if _threshold_score(h, calibrated) >= self.min_score]
            ranking.no_match = not hits
        ranking.hits = hits[:k]
        for rank, hit in enumerate(ranking.hits, 1):
            hit.rank = rank
        if ranking.rerank != "none":
            head = {c.item.id for c in kept[: self.rerank_k]}
            ranking.reranked = sum(hit.id in head for hit in ranking.hits)
        latency["total"] = (time.perf_counter() - started) * 1000
        return ranking

    def _candidates(
        self, query: Query, depth: int, where: SearchFilter | None, all_copies: bool, near: float | None
    ) -> list[Kept]:
        """The coarse top-`depth` after folding copies, fetching twice as deep each time copies fold."""
        from retrv.dedup import Kept, collapse

        vector = self.index.embed_query(query)
        fetch = depth
        while True:
            items, scores = self.index.nearest(vector, fetch, where)
            if all_copies:
                return [Kept(item, score) for item, score in zip(items, scores, strict=True)]
            kept = collapse(
                items, scores, near=near, vectors=lambda found: self.index.store.vectors_for_ids([i.id for i in found])
            )
            if len(kept) >= depth or len(items) < fetch:
                return kept[:depth]
            fetch *= 2

    def _rerank(self, query: Query, items: list[Item], scores: list[float], ranking: Ranking) -> list[Hit]:
        from retrv.precomputed import attach_rows
        from retrv.rerank.base import Candidate

        assert self.reranker is not None
        head = min(len(items), self.rerank_k)
        candidates = [Candidate(item, score) for item, score in zip(items[:head], scores[:head], strict=True)]
        attach_rows(self.index.store, self.reranker, candidates)
        result = self.reranker.rerank(query, candidates)
        ranking.rerank = self.reranker.mode
        ranking.reasoning = result.reasoning
        ranking.inspected = list(result.inspected)
        ranking.fallback = result.fallback
        ranking.forced_answer = result.forced_answer
        ranking.candidate_tokens = result.candidate_tokens
        ranking.prompt_tokens = result.prompt_tokens
        ranking.generated_tokens = result.generated_tokens
        ranking.latency_ms.update({f"rerank.{name}": ms for name, ms in result.latency_ms.items()})
        hits = []
        for position in result.order:
            c = candidates[position]
            hits.append(
                Hit.from_item(
                    c.item,
                    c.coarse_score,
                    score=result.scores[position],
                    rerank_score=result.rerank_scores[position],
                    confidence=result.confidences[position],
                    chosen=position == result.chosen,
                    inspected=position in result.inspected,
                )
            )
        hits += [Hit.from_item(item, score) for item, score in zip(items[head:], scores[head:], strict=True)]
        return hits


def _threshold_score(hit: Hit, calibrated: bool) -> float:
    return hit.rerank_score if calibrated and hit.rerank_score is not None else hit.coarse_score
