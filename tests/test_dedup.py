"""De-duplication of results: copies by content hash by default, near-duplicates by cosine on request."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from retrv.dedup import collapse
from retrv.engine import Engine
from retrv.errors import UsageError
from retrv.index.index import Index
from retrv.items import Item, Query


@pytest.fixture(scope="module")
def copies_index(tmp_path_factory, sample_photos_dir, tiny_clip_dir):
    """The sample photos, plus five copies of chelsea.jpg and one of coffee.jpg under other names, and a
    resized re-encode of rocket.jpg (a near duplicate: other bytes, nearly the same picture)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("dedup") / "photos"
    shutil.copytree(sample_photos_dir, root)
    for i in range(5):
        (root / f"copies-{i}").mkdir()
        shutil.copy(root / "chelsea.jpg", root / f"copies-{i}" / "cat.jpg")
    shutil.copy(root / "coffee.jpg", root / "coffee copy.jpg")
    with Image.open(root / "rocket.jpg") as im:
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(root / "rocket-small.jpg", quality=80)
    index = Index.open(root.parent / "index", create=True, encoder=f"clip:{tiny_clip_dir}", device="cpu")
    index.add([root])
    return root, index


def test_dedup_copies_show_once_by_default(copies_index):
    root, index = copies_index
    query = Query(image=str(root / "chelsea.jpg"))
    ranking = Engine(index).search(query, k=4)
    sources = [h.source for h in ranking.hits]
    assert len(sources) == 4 and len(set(sources)) == 4
    first = ranking.hits[0]
    group = {str(root / "chelsea.jpg"), *(str(root / f"copies-{i}" / "cat.jpg") for i in range(5))}
    assert {first.source, *first.copies} == group and len(first.copies) == 5
    hashes = [item.content_hash for item in index.store.get([h.id for h in ranking.hits])]
    assert len(set(hashes)) == 4


def test_dedup_fetches_deeper_so_k_distinct_items_come_back(copies_index):
    """Six of the coarse top-7 are one picture: k=7 still gives 7 distinct items, in coarse order."""
    root, index = copies_index
    query = Query(image=str(root / "chelsea.jpg"))
    distinct = Engine(index).search(query, k=7)
    everything = Engine(index).search(query, k=100, all_copies=True)
    firsts = list(dict.fromkeys(index.store.get([h.id])[0].content_hash for h in everything.hits))
    kept = [index.store.get([h.id])[0].content_hash for h in distinct.hits]
    assert kept == firsts[:7]
    assert [h.rank for h in distinct.hits] == list(range(1, 8))


def test_dedup_all_copies_keeps_every_copy(copies_index):
    root, index = copies_index
    ranking = Engine(index).search(Query(image=str(root / "chelsea.jpg")), k=6, all_copies=True)
    assert {h.source for h in ranking.hits} >= {str(root / f"copies-{i}" / "cat.jpg") for i in range(5)}
    assert all(h.copies == [] for h in ranking.hits)


def test_dedup_near_duplicates_fold_above_the_threshold(copies_index):
    """With a threshold, every kept pair is below it and every folded item is at or above it with its keeper;
    the resized re-encode of the rocket folds into it at 0.9, and is a result of its own without a threshold."""
    root, index = copies_index
    engine = Engine(index)
    query = Query(image=str(root / "rocket.jpg"))
    plain = [h.source for h in engine.search(query, k=20).hits]
    assert str(root / "rocket-small.jpg") in plain
    vectors = {r["source"]: np.asarray(r["vector"]) for r in index.to_arrow(["source", "vector"]).to_pylist()}
    for threshold in (0.9, 0.8, 0.6):
        ranking = engine.search(query, k=20, near_duplicates=threshold)
        kept = index.store.vectors_for_ids([h.id for h in ranking.hits])
        similarity = kept @ kept.T
        assert (similarity[np.triu_indices(len(kept), 1)] < threshold).all()
        for hit, vector in zip(ranking.hits, kept, strict=True):
            for source in hit.copies:
                assert float(np.dot(vectors[source], vector)) >= threshold - 1e-6
    folded = engine.search(query, k=5, near_duplicates=0.9).hits[0]
    assert folded.source == str(root / "rocket.jpg") and str(root / "rocket-small.jpg") in folded.copies


def test_dedup_refuses_contradictions(copies_index):
    _, index = copies_index
    with pytest.raises(UsageError, match="give one of them"):
        Engine(index).search("x", all_copies=True, near_duplicates=0.9)
    with pytest.raises(UsageError, match="--dedup"):
        Engine(index).search("x", near_duplicates=1.5)


def test_dedup_collapse_keeps_order_and_ignores_empty_hashes():
    items = [
        Item("a", "a", "image", content_hash="h1"),
        Item("b", "b", "image", content_hash=""),
        Item("c", "c", "image", content_hash="h1"),
        Item("d", "d", "image", content_hash=""),
    ]
    kept = collapse(items, [0.9, 0.8, 0.7, 0.6])
    assert [k.item.id for k in kept] == ["a", "b", "d"]
    assert [c.id for c in kept[0].copies] == ["c"] and kept[1].copies == []
