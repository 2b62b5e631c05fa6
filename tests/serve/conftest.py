"""One warm server for the serve tests: the sample photos and two notes, indexed with the offline `lite` encoder,
plus a small `live` index that tests grow while it is served. Both share one encoder, loaded once.

`start_app` serves another app (other limits, a token) over the same warm engines, on its own free port.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NOTES = {
    "recipe.txt": "Brew a strong cup of coffee: grind the beans, pour hot water, wait four minutes.",
    "launch.txt": "The rocket stood on the launch pad at dawn, ready for lift-off into space.",
}


LIVE = "live-of-tests"


@dataclass
class Client:
    """Requests to one server; an error status is an answer like any other."""

    url: str  # http://127.0.0.1:PORT/

    def request(
        self, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, _, body = self.request(path, **kwargs)
        return status, json.loads(body)

    def search(self, **params: Any) -> tuple[int, Any]:
        """GET /api/search with these parameters (a list value repeats the parameter)."""
        return self.json("/api/search?" + urllib.parse.urlencode(params, doseq=True))

    def post_form(self, fields: list[tuple[str, str | Path]], **kwargs: Any) -> tuple[int, Any]:
        """POST /api/search as multipart/form-data; a Path is uploaded (named as given)."""
        from retrv.serve.client import _multipart

        body, content_type = _multipart(fields)
        headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
        return self.json("/api/search", data=body, headers=headers, **kwargs)


@dataclass
class Served:
    client: Client
    service: Any  # retrv.serve.service.SearchService
    photos: Path  # the folder indexed as the default index
    photos_index: Path
    live_folder: Path
    live_index: Path

    @property
    def url(self) -> str:
        return self.client.url


def build(folders: dict[Path, Path]) -> None:
    """Index each folder into its root, with one `lite` encoder."""
    from retrv.encoders.registry import load_encoder
    from retrv.index.index import Index

    encoder = load_encoder("lite", device="cpu")
    for folder, root in folders.items():
        Index.open(root, create=True, encoder=encoder).add([folder])


def _start(app: Any) -> tuple[Client, Callable[[], None]]:
    from retrv.serve.run import listen, start_in_thread, url_of

    sock = listen("127.0.0.1", 0)
    return Client(url_of(sock)), start_in_thread(app, sock)


@pytest.fixture(scope="session")
def served(sample_photos_dir, tmp_path_factory) -> Iterator[Served]:
    from retrv.config import load_settings, resolve_index_path
    from retrv.serve.app import create_app
    from retrv.serve.service import SearchService

    base = tmp_path_factory.mktemp("serve")
    photos = base / "photos"
    shutil.copytree(sample_photos_dir, photos)
    for name, text in NOTES.items():
        (photos / name).write_text(text)
    live_folder = base / "live"
    live_folder.mkdir()
    for name in ("coffee.jpg", "chelsea.jpg"):
        shutil.copy(sample_photos_dir / name, live_folder / name)
    photos_index, live_index = base / "photos-index", resolve_index_path(LIVE)  # a path, and a name
    build({photos: photos_index, live_folder: live_index})

    service = SearchService.open(load_settings({"index": str(photos_index)}), [str(photos_index), LIVE])
    client, stop = _start(create_app(service))
    yield Served(client, service, photos, photos_index, live_folder, live_index)
    stop()


def _apps() -> Iterator[Callable[[Any], Client]]:
    stops = []

    def start(app: Any) -> Client:
        client, stop = _start(app)
        stops.append(stop)
        return client

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def start_app() -> Iterator[Callable[[Any], Client]]:
    """Serve more apps (each on a free port) for one test; they stop when it ends."""
    yield from _apps()


@pytest.fixture(scope="module")
def start_app_module() -> Iterator[Callable[[Any], Client]]:
    """`start_app` for a module's fixtures."""
    yield from _apps()
