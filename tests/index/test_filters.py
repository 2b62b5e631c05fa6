"""Search filters (`--under`, `--since/--until`, `--modality`) against a brute-force filter of the same items."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from retrv.engine import Engine
from retrv.errors import UsageError
from retrv.index.filters import SearchFilter, parse_date
from retrv.index.index import Index
from retrv.index.store import META_FILE, Store

EXIF_DATES = {
    "2019/a.jpg": "2019:03:10 09:30:00",
    "2019/b.jpg": "2019:11:02 18:00:00",
    "2021/c.jpg": "2021:07:04 12:00:00",
}
MTIMES = {
    "2021/d.png": "2021-08-01T10:00:00",
    "loose/e.png": "2020-06-01T08:00:00",
    "loose/f.png": "2017-01-05T08:00:00",
}
DOCS = {"notes/trip.txt": ("a trip to the mountains with friends", "2022-02-02T10:00:00")}


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture(scope="module")
def world(tmp_path_factory, clip_encoder, sample_photos_dir, make_photo):
    """Photos with EXIF dates, photos dated by mtime only, a document, and the real sample photos (dated
    2018 by mtime), in folders; indexed once. Returns (root folder, index path, expected dates by path)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("filters") / "library"
    expected: dict[str, float] = {}
    for i, (name, stamp) in enumerate(EXIF_DATES.items()):
        path = make_photo(root / name, seed=40 + i)
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = stamp
        Image.open(path).save(path, exif=exif)
        os.utime(path, (time.time(), time.time()))
        expected[str(path)] = datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S").timestamp()
    for i, (name, when) in enumerate(MTIMES.items()):
        path = make_photo(root / name, seed=50 + i)
        os.utime(path, (_stamp(when), _stamp(when)))
        expected[str(path)] = _stamp(when)
    for name, (text, when) in DOCS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (_stamp(when), _stamp(when)))
        expected[str(path)] = _stamp(when)
    shutil.copytree(sample_photos_dir, root / "samples")
    for path in (root / "samples").iterdir():
        os.utime(path, (_stamp("2018-04-04T12:00:00"), _stamp("2018-04-04T12:00:00")))
        expected[str(path)] = _stamp("2018-04-04T12:00:00")
    index_path = root.parent / "index"
    index = Index.open(index_path, create=True, encoder=clip_encoder)
    report = index.add([root])
    assert report.added == len(expected) and not report.skipped
    return root, index_path, expected


def _brute_force(index: Index, vector: np.ndarray, accepts, k: int) -> list[str]:
    table = index.to_arrow(["source", "date", "modality", "vector"]).to_pylist()
    rows = [r for r in table if accepts(r)]
    scores = [float(np.dot(np.asarray(r["vector"], np.float32), vector)) for r in rows]
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [rows[i]["source"] for i in order]


def test_filter_dates_are_exif_else_mtime(world, clip_encoder):
    _, index_path, expected = world
    index = Index.open(index_path, encoder=clip_encoder)
    stored = {r["source"]: r["date"] for r in index.to_arrow(["source", "date"]).to_pylist()}
    assert stored == pytest.approx(expected)


CASES = {
    "under": lambda root: ({"under": root / "2019"}, lambda r, root: r["source"].startswith(str(root / "2019") + "/")),
    "under-two": lambda root: (
        {"under": [root / "2021", root / "notes"]},
        lambda r, root: r["source"].startswith((str(root / "2021") + "/", str(root / "notes") + "/")),
    ),
    "since": lambda root: ({"since": "2019-06"}, lambda r, root: r["date"] >= _stamp("2019-06-01T00:00:00")),
    "until-year": lambda root: ({"until": "2019"}, lambda r, root: r["date"] < _stamp("2020-01-01T00:00:00")),
    "range": lambda root: (
        {"since": "2019-01-01", "until": "2020-12-31"},
        lambda r, root: _stamp("2019-01-01T00:00:00") <= r["date"] < _stamp("2021-01-01T00:00:00"),
    ),
    "modality": lambda root: ({"modality": "text"}, lambda r, root: r["modality"] == "text"),
    "all": lambda root: (
        {"under": root, "since": "2018-01-01", "modality": "image"},
        lambda r, root: r["date"] >= _stamp("2018-01-01T00:00:00") and r["modality"] == "image",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("exact_max", [50_000, 2], ids=["exact", "ann"])
def test_filter_matches_brute_force(world, clip_encoder, case, exact_max):
    """Each filter returns exactly the brute-force top-k of the items it accepts, through the exact scan and
    through the ANN's selector (exact_max=2 makes the index HNSW)."""
    root, index_path, _ = world
    index = Index.open(index_path, encoder=clip_encoder, exact_max=exact_max)
    options, accepts = CASES[case](root)
    where = SearchFilter.make(**options)
    vector = index.embed_query("a photo of a cat")
    for k in (1, 3, 100):
        expected = _brute_force(index, vector, lambda r: accepts(r, root), k)
        ranking = Engine(index).search("a photo of a cat", k=k, where=where, all_copies=True)
        assert [h.source for h in ranking.hits] == expected, (case, k)
        assert len(ranking.hits) == min(k, len(_brute_force(index, vector, lambda r: accepts(r, root), 10**6)))
    if exact_max == 2:
        assert index.ann().kind == "hnsw"


def test_filter_under_outside_every_root_is_refused(world, clip_encoder, tmp_path):
    _, index_path, _ = world
    engine = Engine(Index.open(index_path, encoder=clip_encoder))
    with pytest.raises(UsageError, match="holds no item at or below it"):
        engine.search("a cat", where=SearchFilter.make(under=tmp_path))


def test_filter_empty_date_range_returns_nothing(world, clip_encoder):
    _, index_path, _ = world
    engine = Engine(Index.open(index_path, encoder=clip_encoder))
    assert engine.search("a cat", where=SearchFilter.make(since="1990", until="1991")).hits == []


def test_filter_dates_parse():
    assert parse_date("2024") == datetime(2024, 1, 1).timestamp()
    assert parse_date("2024-05", end=True) == pytest.approx(datetime(2024, 6, 1).timestamp(), abs=1e-3)
    assert parse_date("2024-12", end=True) == pytest.approx(datetime(2025, 1, 1).timestamp(), abs=1e-3)
    assert parse_date("2024-05-01", end=True) == pytest.approx(datetime(2024, 5, 2).timestamp(), abs=1e-3)
    assert parse_date("2024-05-01T10:00:00Z") == datetime.fromisoformat("2024-05-01T10:00:00+00:00").timestamp()
    assert parse_date("30d", now=1_000_000_000.0) == 1_000_000_000.0 - 30 * 86400
    assert parse_date("2w", now=1_000_000_000.0) == 1_000_000_000.0 - 14 * 86400
    assert parse_date("@1714550400") == 1714550400.0 and parse_date("@1714550400.5") == 1714550400.5
    for bad in ("yesterday", "2024-13", "05/01/2024", "", "30", "99999", "1714550400"):
        with pytest.raises(UsageError, match="--since: expected a date"):
            parse_date(bad, option="--since")
    with pytest.raises(UsageError, match="after --until"):
        SearchFilter.make(since="2025", until="2024")
    with pytest.raises(UsageError, match="--modality"):
        SearchFilter.make(modality="video")
    assert SearchFilter.make() is None


def test_filter_on_an_index_from_before_dates(tmp_path, clip_encoder, make_photo):
    """A schema-1 index (no `date` column) filters by mtime, and its next write adds the column."""
    photos = tmp_path / "photos"
    for i in range(3):
        path = make_photo(photos / f"p{i}.jpg", seed=i)
        os.utime(path, (_stamp(f"201{i}-01-01T00:00:00"),) * 2)
    index = Index.open(tmp_path / "index", create=True, encoder=clip_encoder)
    index.add([photos])
    index.store._table.drop_columns(["date"])
    meta = json.loads((tmp_path / "index" / META_FILE).read_text())
    (tmp_path / "index" / META_FILE).write_text(json.dumps({**meta, "schema_version": 1}))

    old = Index.open(tmp_path / "index", encoder=clip_encoder)
    assert not old.store.has_dates
    hits = Engine(old).search("x", k=10, where=SearchFilter.make(since="2011"))
    assert sorted(Path(h.source).name for h in hits.hits) == ["p1.jpg", "p2.jpg"]
    assert {item.date for item in old.store.get([h.id for h in hits.hits])} == {
        _stamp("2011-01-01T00:00:00"),
        _stamp("2012-01-01T00:00:00"),
    }

    make_photo(photos / "p3.jpg", seed=3)
    old.add([photos])
    assert Store.open(tmp_path / "index").has_dates
    assert json.loads((tmp_path / "index" / META_FILE).read_text())["schema_version"] == 2
    dates = {Path(r["source"]).name: r["date"] for r in old.to_arrow(["source", "date"]).to_pylist()}
    assert dates["p0.jpg"] == _stamp("2010-01-01T00:00:00")
