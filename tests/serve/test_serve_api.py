"""The HTTP API of `retrv serve` against the library: the same rankings as the Engine, and every refusal a clear 4xx."""

from __future__ import annotations

import http.client
import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from retrv.items import Query


@pytest.fixture(scope="module")
def engine(served):
    """What `retrv search --index <photos>` runs, loaded on its own (not the server's warm engine)."""
    from retrv.config import load_settings
    from retrv.engine import Engine

    return Engine.from_settings(load_settings({"index": str(served.photos_index)}))


def _same_ranking(document: dict, expected) -> None:
    assert document["schema"] == "retrv.search/1"
    assert [h["id"] for h in document["hits"]] == [h.id for h in expected.hits]
    assert [h["score"] for h in document["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
    assert document["no_match"] is expected.no_match


def test_text_search_equals_the_engine(served, engine):
    for words in ("a cup of coffee", "a rocket launch"):
        status, document = served.client.search(q=words, k=5)
        assert status == 200, document
        _same_ranking(document, engine.search(Query(text=words), k=5))
        assert document["index"] == str(served.photos_index) and document["encoder"] == "lite"
        assert document["query"] == {"text": words, "image": None, "modality": "text", "add": [], "subtract": []}


def test_image_upload_equals_the_engine_and_keeps_the_clients_name(served, engine):
    photo = served.photos / "rocket.jpg"
    status, document = served.client.post_form([("image", photo), ("k", "4")])
    assert status == 200, document
    _same_ranking(document, engine.search(Query(image=photo), k=4))
    assert Path(document["hits"][0]["source"]).name == "rocket.jpg"
    assert document["query"]["image"] == str(photo)  # the client's name, not the server's temporary file


def test_composed_queries_equal_the_engine(served, engine):
    coffee, flower = served.photos / "coffee.jpg", served.photos / "flower.jpg"
    fields = [("q", "a cat"), ("image", coffee), ("add", "space"), ("subtract", flower), ("k", "6")]
    status, document = served.client.post_form(fields)
    assert status == 200, document
    query = Query(text="a cat", image=coffee, add=[Query(text="space")], subtract=[Query(image=flower)])
    _same_ranking(document, engine.search(query, k=6))
    assert document["query"]["modality"] == "image,text"
    assert document["query"]["add"] == ["'space'"] and document["query"]["subtract"] == [f"image {flower}"]

    body = json.dumps({"q": "coffee", "add": ["beans", "morning"], "k": 3, "min_score": -1}).encode()
    status, document = served.client.json("/api/search", data=body, headers={"Content-Type": "application/json"})
    assert status == 200, document
    query = Query(text="coffee", add=[Query(text="beans"), Query(text="morning")])
    _same_ranking(document, engine.search(query, k=3))


def test_min_score_gives_no_match(served):
    status, document = served.client.search(q="a cup of coffee", min_score=0.99)
    assert status == 200 and document["no_match"] is True and document["hits"] == []


def test_several_indexes_by_name_or_path(served):
    status, info = served.client.json("/api/info")
    assert status == 200 and info["schema"] == "retrv.serve-info/1"
    assert [i["name"] for i in info["indexes"]] == [str(served.photos_index), "live-of-tests"]
    assert info["rerank"] == {"modes": ["none"], "default": "none", "reasoner": None, "waiting": 0}
    for name in ("live-of-tests", str(served.live_index)):
        status, document = served.client.search(q="a cat", index=name, k=50)
        assert status == 200 and document["index"] == str(served.live_index)
    status, document = served.client.search(q="a cat", index="elsewhere")
    assert status == 404 and "not served here" in document["error"]
    assert served.client.json("/api/health") == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"q": "x", "k": "0"}, 400, "k must be between 1 and 1000"),
        ({"q": "x", "k": "ten"}, 400, "k must be an integer"),
        ({"q": "x", "colour": "red"}, 400, "unknown field 'colour'"),
        ({"q": "x", "rerank": "score"}, 400, "rerank 'score' is not available here"),
        ({"k": "3"}, 400, "give q (words), an image, or both"),
        ({"q": "x", "image": "/etc/passwd"}, 400, "the server opens no path"),
        ({"q": "x", "min_score": "nan"}, 400, "min_score must be a finite number"),
        ({"q": "x", "q2": "y"}, 400, "unknown field"),
    ],
)
def test_bad_requests_are_one_line_4xx(served, params, status, words):
    got, document = served.client.search(**params)
    assert got == status and words in document["error"] and "\n" not in document["error"]


def test_bad_bodies_are_one_line_4xx(served, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    status, document = served.client.post_form([("image", notes)])
    assert status == 400 and document["error"].startswith(f"cannot read query image {notes}: not an image")
    status, document = served.client.json("/api/search", data=b"[1]", headers={"Content-Type": "application/json"})
    assert status == 400 and "must be an object" in document["error"]
    status, document = served.client.json("/api/search", data=b"{", headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in document["error"]
    status, document = served.client.json("/api/search", data=b"q=x", headers={"Content-Type": "text/plain"})
    assert status == 400 and "multipart/form-data" in document["error"]
    assert served.client.json("/api/search", method="DELETE")[0] == 405


def test_thumbnails_only_for_indexed_items(served):
    from PIL import Image

    status, document = served.client.search(q="a photo", k=20)
    assert status == 200
    images = [h for h in document["hits"] if h["image_path"]]
    texts = [h for h in document["hits"] if not h["image_path"]]
    assert len(images) == 7 and len(texts) == 2
    index = served.service.resolve(None).engine.index
    for hit in images:
        status, headers, body = served.client.request(f"/thumb/{hit['id']}")
        assert status == 200 and headers["content-type"] == "image/webp"
        thumb = Image.open(io.BytesIO(body))
        assert max(thumb.size) <= 320 and thumb.format == "WEBP"
        item = index.store.get([hit["id"]])[0]
        cached = served.photos_index / "thumbs" / f"{item.content_hash}.320.webp"
        assert cached.read_bytes() == body
    status, headers, body = served.client.request(f"/image/{images[0]['id']}")
    assert status == 200 and headers["content-type"] == "image/webp" and len(body) > 1000
    status, document = served.client.json(f"/thumb/{texts[0]['id']}")
    assert status == 404 and "has no image" in document["error"]
    assert served.client.json("/thumb/0123456789abcdef0123456789abcdef")[0] == 404
    assert served.client.request(f"/thumb/{images[0]['id']}?index=elsewhere")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/thumb/../../../../etc/passwd",
        "/thumb/..%2F..%2F..%2Fetc%2Fpasswd",
        "/thumb/%2Fetc%2Fpasswd",
        "/image/../../../../etc/passwd",
        "/thumb/" + "a" * 600,
    ],
)
def test_a_path_in_the_url_is_never_opened(served, path):
    host, port = served.url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path)  # sent as is: no client-side normalisation of the dots
    response = connection.getresponse()
    body = response.read()
    assert response.status == 404 and b"root:" not in body  # not the file's content
    connection.close()


def test_a_token_guards_every_route_but_the_page(served, start_app):
    from retrv.serve.app import create_app

    client = start_app(create_app(served.service, token="s3cret"))
    for path in ("/api/health", "/api/info", "/api/search?q=x", "/thumb/abc", "/image/abc"):
        status, document = client.json(path)
        assert status == 401 and "needs a token" in document["error"]
        assert client.json(path, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert client.json("/api/search?q=x", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert client.json("/api/search?q=x", headers={"Cookie": "retrv_token=s3cret"})[0] == 200
    assert client.json("/api/search?q=x", headers={"Cookie": "retrv_token=s3cre"})[0] == 401
    assert client.request("/")[0] == 200 and client.request("/static/app.js")[0] == 200


def test_limits_are_each_a_clear_4xx(served, start_app):
    from retrv.serve.app import create_app
    from retrv.serve.service import SearchService, ServeLimits

    def app(**limits):
        service = SearchService(served.service.served, encoders=served.service.encoders, limits=ServeLimits(**limits))
        return start_app(create_app(service))

    tight = app(max_upload_bytes=60_000, max_query_chars=20, max_terms=2, max_k=5)
    photo = served.photos / "astronaut.png"  # about 400 KB
    status, document = tight.post_form([("image", photo)])
    assert status == 413 and "over the server's limit of 0.0572205 MiB" in document["error"]
    status, document = tight.search(q="x" * 21)
    assert status == 400 and "q is 21 characters long; the limit is 20" in document["error"]
    assert tight.search(q="x", k=6) == (400, {"error": "k must be between 1 and 5, got 6"})
    status, document = tight.search(q="x", add=["a", "b"], subtract=["c"])
    assert status == 400 and "3 add/subtract terms; the limit is 2" in document["error"]
    assert tight.search(q="x", k=5)[0] == 200

    small = app(max_megapixels=0.1)
    status, document = small.post_form([("image", served.photos / "coffee.jpg")])
    assert status == 413 and "image too large" in document["error"]

    hurried = app(request_seconds=1e-6)
    status, document = hurried.search(q="x")
    assert status == 408 and "took longer than the server's limit" in document["error"]


def test_only_loopback_names_are_answered_and_no_cors(served):
    status, document = served.client.json("/api/health", headers={"Host": "attacker.example:8765"})
    assert status == 403 and "localhost" in document["error"]
    for host in ("localhost", "127.0.0.1:1234", "[::1]:80"):
        assert served.client.json("/api/health", headers={"Host": host})[0] == 200
    status, headers, _ = served.client.request("/api/search?q=x", headers={"Origin": "http://attacker.example"})
    assert status == 200 and not any(name.lower().startswith("access-control") for name in headers)


def test_anything_else_is_a_500_whose_traceback_is_logged_not_sent(served, start_app):
    from retrv.serve.app import create_app
    from retrv.serve.service import SearchService

    class Broken(SearchService):
        def info(self):
            raise RuntimeError("a bug at /very/secret/place")

    class Recorder(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    client = start_app(create_app(Broken(served.service.served, encoders=served.service.encoders)))
    recorder = Recorder()
    logger = logging.getLogger("uvicorn.error")  # where uvicorn logs what an app raised
    logger.addHandler(recorder)
    try:
        status, _, body = client.request("/api/info")
        deadline = time.monotonic() + 10  # the server logs once the answer is sent
        while time.monotonic() < deadline and not recorder.records:
            time.sleep(0.01)
    finally:
        logger.removeHandler(recorder)
    assert status == 500 and json.loads(body) == {"error": "internal error; the server's log has the details"}
    assert b"secret" not in body
    assert any(r.exc_info and "a bug at /very/secret/place" in str(r.exc_info[1]) for r in recorder.records)


def test_concurrent_requests_are_all_served_and_batched(served):
    words = [f"{thing} number {i}" for i, thing in enumerate(["a cat", "coffee", "a rocket", "a flower"] * 3)]
    expected = {w: [h["id"] for h in served.client.search(q=w, k=3)[1]["hits"]] for w in words}
    before = served.service.encoders[0].stats.calls
    answers: dict[str, list[str]] = {}

    def ask(w: str) -> None:
        status, document = served.client.search(q=w, k=3)
        answers[w] = [h["id"] for h in document["hits"]] if status == 200 else [f"HTTP {status}"]

    threads = [threading.Thread(target=ask, args=(w,)) for w in words]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected
    stats = served.service.encoders[0].stats
    assert stats.calls - before == len(words) and stats.batches <= stats.calls
