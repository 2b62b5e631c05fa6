"""A server with a reasoner (score mode, the tiny random VLM): the ranking the Engine gives, and a full queue is 503."""

from __future__ import annotations

import threading

import pytest

from retrv.items import Query


@pytest.fixture(scope="module")
def scoring(served, tiny_reasoner_dir, start_app_module):
    from retrv.config import load_settings
    from retrv.serve.app import create_app
    from retrv.serve.service import SearchService, ServeLimits

    settings = load_settings({"index": str(served.photos_index), "reasoner": str(tiny_reasoner_dir), "rerank_k": 4})
    service = SearchService.open(settings, limits=ServeLimits(reasoner_queue=0))
    return settings, service, start_app_module(create_app(service))


def test_score_mode_through_the_server_equals_the_engine(scoring):
    from retrv.engine import Engine

    settings, _, client = scoring
    status, info = client.json("/api/info")
    assert info["rerank"]["modes"] == ["none", "score"] and info["rerank"]["default"] == "score"
    status, document = client.search(q="a cup of coffee", k=4)
    assert status == 200 and document["rerank"] == "score", document
    expected = Engine.from_settings(settings).search(Query(text="a cup of coffee"), k=4)
    assert [h["id"] for h in document["hits"]] == [h.id for h in expected.hits]
    assert [h["rerank_score"] for h in document["hits"]] == pytest.approx([h.rerank_score for h in expected.hits])
    status, document = client.search(q="a cup of coffee", k=4, rerank="none")
    assert status == 200 and document["rerank"] == "none"


def test_a_full_reasoner_queue_answers_503_not_a_hang(scoring):
    _, service, client = scoring
    holding, release = threading.Event(), threading.Event()

    def hold_the_reasoner() -> None:
        with service.reranker.queue.turn():
            holding.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=hold_the_reasoner)
    holder.start()
    try:
        holding.wait(timeout=60)
        status, document = client.search(q="a rocket", k=2)  # no room to wait: --reasoner-queue 0
        assert status == 503 and "the reasoner is busy" in document["error"]
        assert client.search(q="a rocket", k=2, rerank="none")[0] == 200  # coarse search does not queue
    finally:
        release.set()
        holder.join(timeout=60)
    assert client.search(q="a rocket", k=2)[0] == 200
