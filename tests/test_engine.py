"""The Engine: coarse top-K, the reranker seam, the tail below the reranked head, min_score."""

from __future__ import annotations

import pytest

from retrv.engine import Engine
from retrv.index.index import Index
from retrv.items import Query

DOCS = {
    "coffee.txt": "A cup of espresso coffee on a wooden table.",
    "rocket.txt": "A rocket launching into the night sky.",
    "cat.txt": "A tabby cat sleeping on a sofa.",
    "bridge.txt": "A red car parked next to an old stone bridge.",
    "flower.txt": "A yellow daisy flower in a green field.",
    "temple.txt": "A Chinese temple with a curved tiled roof.",
}


@pytest.fixture(scope="module")
def text_index(tmp_path_factory) -> Index:
    folder = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    index = Index.open(tmp_path_factory.mktemp("idx") / "index", create=True, encoder="text", device="cpu")
    report = index.add([folder])
    assert report.added == len(DOCS)
    return index


@pytest.fixture(scope="module")
def scorer(tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.scorer import Scorer

    return Scorer(load_reasoner(str(tiny_reasoner_dir), device="cpu"), fusion_weight=1.0)


def names(ranking) -> list[str]:
    return [h.source.rsplit("/", 1)[-1] for h in ranking.hits]


def test_coarse_ranking_matches_index_search(text_index):
    ranking = Engine(text_index).search("a red car by a bridge", k=3)
    assert names(ranking)[0] == "bridge.txt"
    assert [h.id for h in ranking.hits] == [h.id for h in text_index.search("a red car by a bridge", k=3)]
    assert [h.rank for h in ranking.hits] == [1, 2, 3]
    assert ranking.rerank == "none" and {"coarse", "total"} <= set(ranking.latency_ms)


def test_reranked_head_then_coarse_tail(text_index, scorer):
    coarse = Engine(text_index).search("espresso", k=6)
    ranking = Engine(text_index, scorer, rerank_k=3).search("espresso", k=6)
    assert ranking.rerank == "score"
    head, tail = ranking.hits[:3], ranking.hits[3:]
    assert {h.id for h in head} == {h.id for h in coarse.hits[:3]}
    assert [h.id for h in tail] == [h.id for h in coarse.hits[3:]]
    assert all(h.rerank_score is not None for h in head) and all(h.rerank_score is None for h in tail)
    fused = [h.score for h in head]
    assert fused == sorted(fused, reverse=True)
    for h in head:
        assert h.score == pytest.approx(h.coarse_score + h.rerank_score, abs=1e-6)


def test_min_score_filters_on_rerank_probability(text_index, scorer):
    ranking = Engine(text_index, scorer, rerank_k=6).search("espresso", k=6)
    threshold = sorted(h.rerank_score for h in ranking.hits)[3]
    kept = Engine(text_index, scorer, rerank_k=6, min_score=threshold).search("espresso", k=6)
    assert not kept.no_match and all(h.rerank_score >= threshold for h in kept.hits) and len(kept.hits) == 3
    none = Engine(text_index, scorer, rerank_k=6, min_score=1.5).search("espresso", k=6)
    assert none.no_match and none.hits == []


def test_min_score_without_reranker_uses_cosine(text_index):
    ranking = Engine(text_index, min_score=0.3).search(Query(text="a cat on a couch"), k=6)
    assert names(ranking)[0] == "cat.txt"
    assert all(h.coarse_score >= 0.3 for h in ranking.hits) and len(ranking.hits) < len(DOCS)


def test_k_must_be_positive(text_index):
    with pytest.raises(ValueError):
        Engine(text_index).search("x", k=0)
