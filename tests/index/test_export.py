"""`export_index`: every format round-trips, and the exported vectors give search's top-k with faiss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrv.errors import UsageError
from retrv.index.export import export_index
from retrv.index.index import Index


@pytest.fixture(scope="module")
def exported_index(tmp_path_factory, clip_encoder, sample_photos_dir, make_photo):
    root = tmp_path_factory.mktemp("export")
    photos = root / "photos"
    for i in range(9):
        make_photo(photos / f"gen-{i}.png", seed=100 + i)
    (photos / "notes.txt").write_text("a list of things to photograph: bridges, cats, coffee")
    index = Index.open(root / "index", create=True, encoder=clip_encoder, exact_max=4)  # HNSW, like a big index
    index.add([photos, sample_photos_dir])
    return index


def _load(fmt: str, out):
    """(rows without vectors, vectors) from an export."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
        return table.drop(["vector"]).to_pylist(), vectors
    if fmt == "npy":
        rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
        return rows, np.load(out / "vectors.npy")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "vector"} for r in rows], np.array(
        [r["vector"] for r in rows], np.float32
    )


@pytest.mark.parametrize("fmt", ["parquet", "npy", "jsonl"])
def test_export_round_trips_and_faiss_gives_the_same_top_k(exported_index, tmp_path, fmt):
    import faiss

    out = tmp_path / {"parquet": "items.parquet", "npy": "items", "jsonl": "items.jsonl"}[fmt]
    report = export_index(exported_index.store, out, fmt, batch_size=5)  # several batches
    assert report.items == exported_index.store.count() and report.dim == exported_index.encoder.dim
    rows, vectors = _load(fmt, out)
    stored = {r["id"]: r for r in exported_index.to_arrow().to_pylist()}
    assert len(rows) == len(stored) and vectors.dtype == np.float32 and vectors.shape[1] == report.dim
    for row, vector in zip(rows, vectors, strict=True):
        item = stored[row["id"]]
        assert {k: row[k] for k in ("source", "modality", "content_hash", "image_path")} == {
            k: item[k] for k in ("source", "modality", "content_hash", "image_path")
        }
        assert row["date"] == pytest.approx(item["date"]) and np.array_equal(vector, item["vector"])

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    for query in ("a cat", "a cup of coffee", "a list of things"):
        _, found = flat.search(exported_index.embed_query(query)[None], 5)
        hits = exported_index.search(query, k=5)
        assert [rows[i]["source"] for i in found[0]] == [h.source for h in hits]


def test_export_with_precomputed_rows(exported_index, tmp_path):
    """A side table's rows come out aligned with the items, zeros (and has_<table> false) where an item has none."""
    store = exported_index.store
    ids = [r["id"] for r in exported_index.to_arrow(["id"]).to_pylist()]
    with_rows = ids[::2]
    content = np.arange(len(with_rows) * 2 * 3, dtype=np.float32).reshape(len(with_rows), 2, 3)
    store.side_upsert("icm_test", with_rows, {"content": content})
    report = export_index(store, tmp_path / "e", "npy", precomputed="icm_test", batch_size=4)
    order = [json.loads(line)["id"] for line in (tmp_path / "e" / "items.jsonl").read_text().splitlines()]
    exported = np.load(tmp_path / "e" / "icm_test.content.npy")
    present = np.load(tmp_path / "e" / "has_icm_test.npy")
    assert exported.shape == (len(ids), 2, 3) and report.precomputed == "icm_test"
    for row, item_id in enumerate(order):
        if item_id in with_rows:
            assert present[row] and np.array_equal(exported[row], content[with_rows.index(item_id)])
        else:
            assert not present[row] and not exported[row].any()

    import pyarrow.parquet as pq

    export_index(store, tmp_path / "e.parquet", "parquet", precomputed="icm_test")
    table = pq.read_table(tmp_path / "e.parquet")
    field = table.schema.field("icm_test.content")
    assert json.loads(field.metadata[b"retrv.shape"]) == [2, 3]
    store.side_drop("icm_test")


def test_export_bad_requests(exported_index, tmp_path):
    with pytest.raises(UsageError, match="format must be one of"):
        export_index(exported_index.store, tmp_path / "x", "csv")
    (tmp_path / "taken.parquet").write_text("mine")
    with pytest.raises(UsageError, match="exists"):
        export_index(exported_index.store, tmp_path / "taken.parquet", "parquet")
    assert (tmp_path / "taken.parquet").read_text() == "mine"
    for out in (tmp_path / "missing" / "x.parquet", tmp_path / "taken.parquet" / "x.jsonl"):
        with pytest.raises(UsageError, match="there is no folder"):
            export_index(exported_index.store, out, "jsonl")
    with pytest.raises(UsageError, match="there is no folder"):
        export_index(exported_index.store, tmp_path / "missing" / "npy", "npy")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(UsageError, match="holds no table 'icm_nope'"):
        export_index(exported_index.store, tmp_path / "y.parquet", "parquet", precomputed="icm_nope")
