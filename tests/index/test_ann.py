"""faiss over the store: exact ranking, the per-version cache, incremental updates, HNSW with deletions."""

from __future__ import annotations

import numpy as np
import pytest

from retrv.index.ann import AnnIndex, AnnParams
from retrv.index.store import Store, key_for_id
from retrv.items import Item

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def items(start: int, n: int) -> list[Item]:
    return [Item(id=f"doc{i}", source=f"/d/{i}", modality="text", text=str(i)) for i in range(start, start + n)]


def brute_force(store: Store, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keys, vectors = store.all_vectors()
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), keys[order]


def cache_files(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "ann").iterdir())


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store.create(tmp_path / "idx", encoder_spec="x", dim=DIM)
    s.upsert(items(0, 300), unit(300, seed=0))
    return s


def test_flat_ranking_equals_brute_force(store):
    ann = AnnIndex.load_or_build(store)
    assert ann.kind == "flat" and ann.ntotal == 300 and ann.source == "built"
    queries = unit(7, seed=1)
    scores, keys = ann.search(queries, 10)
    want_scores, want_keys = brute_force(store, queries, 10)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    assert store.items_for_keys(keys[0].tolist())[0].id == f"doc{int(np.argmax(unit(300, 0) @ queries[0]))}"


def test_fewer_items_than_k_pads_with_minus_one(tmp_path):
    s = Store.create(tmp_path / "small", encoder_spec="x", dim=DIM)
    empty = AnnIndex.load_or_build(s)
    scores, keys = empty.search(unit(1, 0), 3)
    assert keys.tolist() == [[-1, -1, -1]] and np.isneginf(scores).all()
    s.upsert(items(0, 2), unit(2, 0))
    scores, keys = AnnIndex.load_or_build(s).search(unit(2, 5), 4)
    assert (keys[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()
    assert sorted(keys[0, :2].tolist()) == sorted([key_for_id("doc0"), key_for_id("doc1")])


def test_cache_is_reused_when_the_version_is_unchanged(store):
    first = AnnIndex.load_or_build(store)
    files = cache_files(store)
    assert files == [f"v{store.version()}.flat.faiss", f"v{store.version()}.flat.npz"]
    mtime = first.path.stat().st_mtime_ns
    again = AnnIndex.load_or_build(Store.open(store.root))
    assert again.source == "cache" and again.path.stat().st_mtime_ns == mtime and cache_files(store) == files
    q = unit(3, seed=9)
    np.testing.assert_array_equal(again.search(q, 5)[1], first.search(q, 5)[1])
    assert AnnIndex.describe_cache(store) == {
        "kind": "flat",
        "version": store.version(),
        "current": True,
        "file": str(first.path),
        "file_bytes": first.path.stat().st_size,
        "plan": {"kind": "flat", "expected_bytes": 300 * (4 * store.meta.dim + 9), "budget_bytes": None},
    }


def test_incremental_update_matches_a_fresh_build(store):
    AnnIndex.load_or_build(store)
    store.upsert(items(300, 40), unit(40, seed=2))  # new rows
    store.delete([f"doc{i}" for i in range(0, 60, 3)])  # deleted rows
    store.upsert(items(100, 5), unit(5, seed=3))  # replaced vectors, same ids
    updated = AnnIndex.load_or_build(store)
    assert updated.source == "updated" and updated.ntotal == store.count() == 320
    assert cache_files(store) == [f"v{store.version()}.flat.faiss", f"v{store.version()}.flat.npz"]
    fresh = AnnIndex.build(store, kind="flat")
    queries = np.concatenate([unit(10, seed=4), unit(5, seed=3)])
    np.testing.assert_array_equal(updated.search(queries, 20)[1], fresh.search(queries, 20)[1])
    np.testing.assert_array_equal(updated.search(queries, 20)[1], brute_force(store, queries, 20)[1])
    assert (updated.search(unit(5, seed=3), 1)[1][:, 0] == [key_for_id(f"doc{i}") for i in range(100, 105)]).all()


def test_small_update_of_a_big_index_is_replayed_not_rewritten(store, monkeypatch):
    import retrv.index.ann as ann_module

    monkeypatch.setattr(ann_module, "_SMALL_FILE_BYTES", 0)  # pretend the index file is big
    first = AnnIndex.load_or_build(store)
    store.delete(["doc5", "doc6"])
    store.upsert(items(400, 3), unit(3, seed=11))
    for _ in range(2):  # each process replays the 5-row delta on the older file
        ann = AnnIndex.load_or_build(Store.open(store.root))
        assert ann.source == "updated" and ann.replayed == 5 and ann.ntotal == 301
        assert cache_files(store) == sorted([first.path.name, first.path.with_suffix(".npz").name])
    np.testing.assert_array_equal(ann.search(unit(4, 12), 10)[1], brute_force(store, unit(4, 12), 10)[1])


def test_unreadable_cache_is_rebuilt(store):
    ann = AnnIndex.load_or_build(store)
    ann.path.write_bytes(b"garbage")
    again = AnnIndex.load_or_build(store)
    assert again.source == "built" and again.ntotal == 300


def test_hnsw_above_exact_max_has_high_recall(store):
    ann = AnnIndex.load_or_build(store, exact_max=100)
    assert ann.kind == "hnsw" and ann.ntotal == 300
    queries = unit(50, seed=5)
    _, got = ann.search(queries, 10)
    _, want = brute_force(store, queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= 0.9
    assert AnnIndex.load_or_build(store, exact_max=100).source == "cache"
    assert ann.stats()["kind"] == "hnsw" and ann.stats()["m"] == ann.params.m


def test_hnsw_deletions_are_never_returned_and_many_trigger_a_rebuild(store):
    AnnIndex.load_or_build(store, exact_max=100)
    deleted = [f"doc{i}" for i in range(0, 300, 30)]  # 10 of 300: masked, not rebuilt
    store.delete(deleted)
    store.upsert(items(7, 1), unit(1, seed=6))  # doc7 gets a new vector: old position masked
    ann = AnnIndex.load_or_build(store, exact_max=100)
    assert ann.source == "updated" and ann.stats()["masked"] == 11 and ann.ntotal == 290
    deleted_keys = {key_for_id(i) for i in deleted}
    _, keys = ann.search(unit(300, seed=0), 50)  # the deleted vectors themselves as queries
    assert not deleted_keys & set(keys.ravel().tolist())
    assert (keys[:, :49] != -1).all()
    assert ann.search(unit(1, seed=6), 1)[1][0, 0] == key_for_id("doc7")
    _, everything = ann.search(unit(1, seed=8), 290)
    assert len(set(everything[0].tolist()) - {-1}) >= 0.9 * 290 and not deleted_keys & set(everything[0].tolist())

    store.delete([f"doc{i}" for i in range(1, 300, 7)])  # +43 deletions: over 10% masked
    rebuilt = AnnIndex.load_or_build(store, exact_max=100)
    assert rebuilt.source == "built" and rebuilt.stats()["masked"] == 0 and rebuilt.ntotal == store.count()


def test_ivf_option_recalls_updates_and_removes(store):
    ivf = AnnParams(large="ivf", nprobe=4)
    ann = AnnIndex.load_or_build(store, exact_max=100, params=ivf)
    assert ann.kind == "ivf" and ann.ntotal == 300 and ann.stats()["nlist"] == 6
    queries = unit(50, seed=5)
    _, want = brute_force(store, queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(ann.search(queries, 10)[1], want)])
    assert recall >= 0.6  # 4 of 6 lists on 16-d random data
    full = AnnParams(large="ivf", nprobe=6)  # every list: exact
    np.testing.assert_array_equal(
        AnnIndex.load_or_build(store, exact_max=100, params=full).search(queries, 10)[1], want
    )

    store.delete([f"doc{i}" for i in range(0, 300, 10)])
    store.upsert(items(7, 1), unit(1, seed=6))
    updated = AnnIndex.load_or_build(store, exact_max=100, params=full)
    assert updated.source == "updated" and updated.ntotal == store.count() == 270 and updated.index.ntotal == 270
    np.testing.assert_array_equal(updated.search(queries, 10)[1], brute_force(store, queries, 10)[1])
    assert AnnIndex.load_or_build(Store.open(store.root), exact_max=100, params=full).source == "cache"


def test_kind_follows_the_size(store):
    assert AnnIndex.load_or_build(store, exact_max=400).kind == "flat"
    store.upsert(items(300, 200), unit(200, seed=7))
    grown = AnnIndex.load_or_build(store, exact_max=400)
    assert grown.kind == "hnsw" and grown.ntotal == 500
    assert cache_files(store) == [f"v{store.version()}.hnsw.faiss", f"v{store.version()}.hnsw.npz"]
