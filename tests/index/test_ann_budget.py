"""The ANN chosen by a memory budget: IVF-PQ (OPQ-rotated) with the exact re-rank, in RAM or on disk."""

from __future__ import annotations

import numpy as np
import pytest

from retrv.config import parse_size
from retrv.index import ann as ann_module
from retrv.index.ann import AnnIndex
from retrv.index.ann_plan import flat_bytes, hnsw_bytes, plan_ann
from retrv.index.store import Store
from retrv.items import Item

DIM, N, CLUSTERS = 64, 20_000, 100


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int) -> np.ndarray:
    """Points around 100 fixed centres (cosine about 0.7 to their centre), like real embeddings."""
    centres = unit_rows(np.random.default_rng(12345).standard_normal((CLUSTERS, DIM)))
    rng = np.random.default_rng(seed)
    return unit_rows(centres[rng.integers(0, CLUSTERS, n)] + unit_rows(rng.standard_normal((n, DIM))))


@pytest.fixture(scope="module")
def clustered_store(tmp_path_factory) -> Store:
    store = Store.create(tmp_path_factory.mktemp("budget") / "idx", encoder_spec="x", dim=DIM)
    vectors = clustered(N, seed=0)
    for start in range(0, N, 5000):
        items = [Item(id=f"v{i}", source=f"/v/{i}", modality="text") for i in range(start, start + 5000)]
        store.upsert(items, vectors[start : start + 5000])
    return store


def recall_at(ann: AnnIndex, store: Store, queries: np.ndarray, k: int = 50) -> float:
    keys, vectors = store.all_vectors()
    exact = keys[np.argsort(-(queries @ vectors.T), axis=1)[:, :k]]
    _, found = ann.search(queries, k)
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def resident_bytes(ann: AnnIndex) -> int:
    """What the index holds in memory: faiss's serialized index (without on-disk lists) and retrv's arrays."""
    import faiss

    return len(faiss.serialize_index(ann.index)) + ann.labels.nbytes + ann.dead.nbytes


def test_memory_budget_sizes_parse():
    assert parse_size("512MB") == 512 * 10**6 and parse_size("4GiB") == 4 * 2**30 and parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_memory_budget_chooses_the_best_kind_that_fits():
    n, dim = 1_000_000, 512
    assert plan_ann(n, dim, budget=None, exact_max=50_000).kind == "hnsw"
    assert plan_ann(n, dim, budget=hnsw_bytes(n, dim, 32), exact_max=50_000).kind == "hnsw"
    assert plan_ann(10_000, dim, budget=flat_bytes(10_000, dim), exact_max=50_000).kind == "flat"
    pq = plan_ann(n, dim, budget=2**30, exact_max=50_000)
    assert (pq.kind, pq.m, pq.opq, pq.mmap) == ("ivfpq", 128, False, False) and pq.expected_bytes <= 2**30
    small = plan_ann(n, dim, budget=64 * 10**6, exact_max=50_000)
    assert (small.kind, small.m, small.opq, small.mmap) == ("ivfpq", 32, True, False)
    assert small.factory == "OPQ32_512,IVF1000,PQ32"
    tiny = plan_ann(n, dim, budget=10**6, exact_max=50_000)
    assert tiny.kind == "ivfpq" and tiny.mmap and tiny.m == 8
    few = plan_ann(1000, dim, budget=1000, exact_max=50_000)  # too few vectors to train codebooks on
    assert few.kind == "flat" and few.expected_bytes > few.budget


def test_memory_budget_ivfpq_recalls_after_the_exact_rerank_and_fits(clustered_store):
    budget = 700_000  # flat needs 5.3 MB, IVF-PQ with 16 bytes a vector 0.76 MB: 8 bytes with OPQ
    ann = AnnIndex.load_or_build(clustered_store, budget=budget)
    assert (ann.kind, ann.plan.m, ann.plan.opq, ann.plan.mmap) == ("ivfpq", 8, True, False)
    assert ann.plan.expected_bytes <= budget
    assert resident_bytes(ann) <= budget
    assert recall_at(ann, clustered_store, clustered(100, seed=7)) >= 0.95
    scores, keys = ann.search(clustered(3, seed=8), 5)  # exact scores: those of the stored vectors
    stored = dict(zip(*clustered_store.all_vectors()))
    np.testing.assert_allclose(scores[0], [float(stored[k] @ clustered(3, seed=8)[0]) for k in keys[0]], atol=1e-5)

    again = AnnIndex.load_or_build(Store.open(clustered_store.root))  # the budget holds for the cached index
    assert again.source == "cache" and again.kind == "ivfpq" and again.plan == ann.plan
    np.testing.assert_array_equal(again.search(clustered(5, seed=9), 10)[1], ann.search(clustered(5, seed=9), 10)[1])


def test_memory_budget_below_the_smallest_codes_maps_the_lists_from_disk(clustered_store, monkeypatch, tmp_path):
    monkeypatch.setattr(ann_module, "_SHARD_ROWS", 6000)  # four shards, merged on disk
    store = Store.open(clustered_store.root)
    store_ann_dir = tmp_path / "ann"
    monkeypatch.setattr(Store, "ann_dir", property(lambda self: store_ann_dir))
    ann = AnnIndex.load_or_build(store, budget=400_000)
    assert ann.kind == "ivfpq" and ann.plan.mmap and ann.plan.m == 8
    assert sorted(p.suffix for p in store_ann_dir.iterdir()) == [".faiss", ".ivfdata", ".npz", ".vectors"]
    assert ann.plan.expected_bytes <= 400_000 and resident_bytes(ann) <= 400_000
    assert recall_at(ann, store, clustered(100, seed=7)) >= 0.95
    again = AnnIndex.load_or_build(Store.open(clustered_store.root))
    assert again.source == "cache" and again.plan.mmap
    np.testing.assert_array_equal(again.search(clustered(5, seed=9), 10)[1], ann.search(clustered(5, seed=9), 10)[1])


def test_memory_budget_ivfpq_is_updated_in_place_of_a_rebuild(tmp_path):
    from retrv.index.store import key_for_id

    store = Store.create(tmp_path / "idx", encoder_spec="x", dim=DIM)
    vectors = clustered(8000, seed=3)
    store.upsert([Item(id=f"v{i}", source=f"/v/{i}", modality="text") for i in range(8000)], vectors)
    first = AnnIndex.load_or_build(store, budget=320_000)
    assert first.kind == "ivfpq" and not first.plan.mmap
    added = clustered(50, seed=4)
    store.upsert([Item(id=f"new{i}", source=f"/n/{i}", modality="text") for i in range(50)], added)
    store.delete([f"v{i}" for i in range(10)])
    updated = AnnIndex.load_or_build(store)  # the budget holds
    assert updated.source == "updated" and updated.kind == "ivfpq" and updated.ntotal == 8040
    scores, keys = updated.search(added[:5], 1)
    assert keys[:, 0].tolist() == [key_for_id(f"new{i}") for i in range(5)]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # exact: the stored vectors, not their codes
    _, found = updated.search(vectors[:10], 3)
    assert not set(found.ravel().tolist()) & {key_for_id(f"v{i}") for i in range(10)}
    again = AnnIndex.load_or_build(Store.open(store.root))
    np.testing.assert_array_equal(again.search(added[:5], 3)[1], updated.search(added[:5], 3)[1])


@pytest.mark.parametrize("budget", [700_000, 400_000], ids=["in_ram", "on_disk"])
def test_memory_budget_ivfpq_searches_only_the_allowed_keys(clustered_store, budget, monkeypatch, tmp_path):
    # the filters' faiss selector must reach the IVF lists through the OPQ rotation and the exact re-rank
    store = Store.open(clustered_store.root)
    ann_dir = tmp_path / "ann"
    monkeypatch.setattr(Store, "ann_dir", property(lambda self: ann_dir))
    ann = AnnIndex.load_or_build(store, budget=budget)
    assert ann.kind == "ivfpq" and ann.plan.opq and ann.plan.mmap == (budget < 700_000)
    keys, vectors = store.all_vectors()
    allowed = keys[::7]
    queries = clustered(20, seed=11)
    _, found = ann.search(queries, 50, allowed=allowed)
    assert (found >= 0).all() and np.isin(found, allowed).all()
    subset = vectors[::7]
    exact = allowed[np.argsort(-(queries @ subset.T), axis=1)[:, :50]]
    assert np.mean([len(set(f) & set(e)) / 50 for f, e in zip(found, exact)]) >= 0.9


def test_memory_budget_that_nothing_meets_takes_the_smallest_and_says_so(tmp_path):
    from retrv.index.ann_plan import ivf_lists, ivfpq_bytes

    n, dim = 3000, 384  # the OPQ matrix alone (576 KiB) outweighs the codes of so few vectors
    small = plan_ann(n, dim, budget=200_000, exact_max=0)
    assert small.over_budget and not small.opq
    assert small.expected_bytes == min(
        ivfpq_bytes(n, dim, ivf_lists(n), m, opq, mmap)
        for m in (8, 128)
        for opq in (True, False)
        for mmap in (True, False)
    )
    assert plan_ann(n, dim, budget=2_000_000, exact_max=0).expected_bytes <= 2_000_000
    assert plan_ann(500, dim, budget=10_000, exact_max=0).over_budget  # too few to train: flat, over budget

    from retrv.index.index import Index

    notes: list[str] = []
    store = Store.create(tmp_path / "idx", encoder_spec="x", dim=DIM)
    store.upsert([Item(id=f"v{i}", source=f"/v/{i}", modality="text") for i in range(2000)], clustered(2000, seed=5))
    index = Index.open(tmp_path / "idx", ann_memory=1000, notify=notes.append)
    index.ann()
    assert len(notes) == 1 and "no ANN index of 2000 vectors fits" in notes[0]
    index.ann()
    assert len(notes) == 1  # said once, when built
