"""A `retrv build-index` in another process, beside the server: every search answers while it writes, and what
it wrote is searched without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from PIL import Image, ImageOps


def _new_photos(source, folder, count: int) -> list:
    """`count` photos with content of their own (mirrored, rotated and cropped samples)."""
    folder.mkdir()
    paths = []
    for i in range(count):
        name = sorted(source.glob("*.jpg"))[i % 4]
        with Image.open(name) as im:
            im = ImageOps.mirror(im.convert("RGB")).rotate(90 * (i // 4), expand=True)
            im = im.crop((i, i, im.width - 3 * i, im.height - 2 * i))
        path = folder / f"new{i:02d}.png"
        im.save(path)
        paths.append(path)
    return paths


def test_a_build_beside_the_server_is_searched_without_restart(served):
    client = served.client
    before = client.search(q="a photo", index="live-of-tests", k=100)[1]["hits"]
    new = _new_photos(served.photos, served.live_folder / "more", 8)
    build = [
        sys.executable,
        "-m",
        "retrv.cli.app",
        "build-index",
        str(served.live_folder),
        "--index",
        "live-of-tests",  # by name, under the same RETRV_HOME as the server
        "--batch-size",
        "1",  # one Lance version per photo: many writes to search between
        "-q",
    ]
    process = subprocess.Popen(build, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True)
    answers: list[list[tuple[int, int]]] = [[], [], []]  # per searcher: (status, hits) of each search
    stop = threading.Event()

    def search_while_building(mine: list[tuple[int, int]]) -> None:
        while not stop.is_set():
            status, document = client.search(q="a photo", index="live-of-tests", k=100)
            mine.append((status, len(document.get("hits", [])) if status == 200 else -1))
            stop.wait(0.05)

    searchers = [threading.Thread(target=search_while_building, args=(mine,)) for mine in answers]
    for searcher in searchers:
        searcher.start()
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        stop.set()
        for searcher in searchers:
            searcher.join(timeout=60)
    assert process.returncode == 0, stderr
    for mine in answers:
        assert mine and all(status == 200 for status, _ in mine), mine
        counts = [n for _, n in mine]
        assert counts == sorted(counts)  # never a step back while the build adds

    after = client.search(q="a photo", index="live-of-tests", k=100)[1]["hits"]
    assert len(after) == len(before) + len(new)
    status, document = client.post_form([("image", new[5]), ("index", "live-of-tests"), ("k", "1")])
    assert status == 200 and document["hits"][0]["source"] == str(new[5])
