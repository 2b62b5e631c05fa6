"""Precomputed reranker rows: `compress_index` writes the ICM tokens of every item into `icm_<checkpoint>`
(incremental, resumable, never stale); `attach_rows` hands the engine's candidates their current rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from retrv.errors import CompressError
from retrv.index.store import Store
from retrv.items import Item
from retrv.precomputed import attach_rows, compress_index, item_fingerprint
from retrv.rerank.base import Candidate
from retrv.rerank.checkpoint import load_reasoner, save_reasoner
from retrv.rerank.reasoner import Reasoner, ReasonerOptions


def _icm_checkpoint(base_dir, out_dir, seed: int) -> Reasoner:
    from retrv.icm.module import ICM, ICMConfig

    base = load_reasoner(str(base_dir), device="cpu")
    torch.manual_seed(seed)
    icm = ICM(ICMConfig(hidden_size=64, num_heads=4, num_layers=1, num_memory_tokens=3))
    return Reasoner.load(str(save_reasoner(base, out_dir, stage="icm", icm=icm)), device="cpu")


def icm_table_name(checkpoint_id: str) -> str:
    return f"icm_{checkpoint_id}"


@pytest.fixture(scope="module")
def reasoner(tiny_reasoner_dir, tmp_path_factory):
    return _icm_checkpoint(tiny_reasoner_dir, tmp_path_factory.mktemp("icm-a"), seed=0)


@pytest.fixture(scope="module")
def items(sample_photos_dir):
    photos = sorted(sample_photos_dir.glob("*"))[:4]
    out = [Item(f"img{i}", str(p), "image", image_path=str(p), content_hash=f"h-img{i}") for i, p in enumerate(photos)]
    texts = ["a cup of coffee on a table", "a rocket launching", "a small red circle left of a blue square"]
    out += [Item(f"txt{i}", f"doc{i}", "text", text=t, content_hash=f"h-txt{i}") for i, t in enumerate(texts)]
    out.append(
        Item("both", "both", "image,text", text="a photo of a cat", image_path=str(photos[0]), content_hash="h-both")
    )
    return out


@pytest.fixture
def store(tmp_path, items):
    s = Store.create(tmp_path / "index", encoder_spec="test:none", dim=4)
    s.upsert(items, np.random.default_rng(0).normal(size=(len(items), 4)).astype(np.float32))
    return s


def _direct(reasoner, item):
    from retrv.icm.features import full_tokens

    with torch.no_grad():
        tokens = full_tokens(reasoner.model, reasoner, item)[None]
        return reasoner.icm.content(tokens)[0].numpy(), reasoner.icm.memory(tokens)[0].numpy()


def test_compress_writes_content_and_memory_of_every_item(store, reasoner, items):
    events = []
    report = compress_index(store, reasoner, batch_size=3, progress=events.append)
    table = icm_table_name(reasoner.checkpoint_id)
    assert report.table == table and table in store.side_tables()
    assert (report.computed, report.unchanged, report.removed, report.failed) == (len(items), 0, 0, [])
    assert not report.interrupted and report.remaining == 0
    rows = store.side_get(table, [it.id for it in items])
    assert set(rows) == {it.id for it in items}
    for item in items:
        content, memory = _direct(reasoner, item)
        assert rows[item.id]["content"].shape == (64,) and rows[item.id]["memory"].shape == (3, 64)
        assert rows[item.id]["content"].dtype == np.float32  # float32 reasoner -> exact tokens
        np.testing.assert_allclose(rows[item.id]["content"], content, atol=1e-5)
        np.testing.assert_allclose(rows[item.id]["memory"], memory, atol=1e-5)
        np.testing.assert_array_equal(rows[item.id]["fingerprint"], item_fingerprint(item))
    assert events[-1].stage == "compress" and events[-1].done == events[-1].total == len(items)


def test_incremental_skips_unchanged_recomputes_changed_removes_gone(store, reasoner, items):
    compress_index(store, reasoner, batch_size=4)
    again = compress_index(store, reasoner, batch_size=4)
    assert (again.computed, again.unchanged, again.removed) == (0, len(items), 0)

    table = icm_table_name(reasoner.checkpoint_id)
    old = store.side_get(table, ["txt0"])["txt0"]["content"]
    changed = dataclasses.replace(items[4], text="a rocket on the moon", content_hash="h-new")
    store.upsert([changed], np.ones((1, 4), np.float32))
    store.delete(["txt2"])
    report = compress_index(store, reasoner, batch_size=4)
    assert (report.computed, report.unchanged, report.removed) == (1, len(items) - 2, 1)
    assert store.side_ids(table) == {it.id for it in items} - {"txt2"}
    new = store.side_get(table, ["txt0"])["txt0"]["content"]
    np.testing.assert_allclose(new, _direct(reasoner, changed)[0], atol=1e-5)
    assert not np.allclose(new, old)


def test_interrupted_run_resumes_where_it_stopped(store, reasoner, items):
    polls = []
    stop_after_two_batches = lambda: polls.append(1) or len(polls) > 2  # noqa: E731
    first = compress_index(store, reasoner, batch_size=3, should_stop=stop_after_two_batches)
    assert first.interrupted and first.computed == 6 and first.remaining == len(items) - 6
    assert len(store.side_ids(icm_table_name(reasoner.checkpoint_id))) == 6
    second = compress_index(store, reasoner, batch_size=3)
    assert (second.computed, second.unchanged, second.interrupted) == (len(items) - 6, 6, False)


def test_changed_checkpoint_writes_a_new_table(store, reasoner, tiny_reasoner_dir, tmp_path):
    compress_index(store, reasoner)
    other = _icm_checkpoint(tiny_reasoner_dir, tmp_path / "icm-b", seed=1)
    assert other.checkpoint_id != reasoner.checkpoint_id
    report = compress_index(store, other)
    assert report.table == icm_table_name(other.checkpoint_id) and report.computed == store.count()
    assert {icm_table_name(reasoner.checkpoint_id), report.table} <= set(store.side_tables())
    cleaned = compress_index(store, other, drop_stale=True)
    assert cleaned.dropped_tables == [icm_table_name(reasoner.checkpoint_id)] and cleaned.computed == 0
    assert store.side_tables() == [report.table]


def test_unreadable_image_is_reported_and_the_rest_computed(tmp_path, reasoner, items):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    store = Store.create(tmp_path / "index", encoder_spec="test:none", dim=4)
    rows = [*items[:3], Item("bad", str(bad), "image", image_path=str(bad), content_hash="h-bad")]
    store.upsert(rows, np.zeros((4, 4), np.float32))
    report = compress_index(store, reasoner, batch_size=4)
    assert report.computed == 3 and [i for i, _ in report.failed] == ["bad"] and "broken.jpg" in report.failed[0][1]


def test_bare_reasoner_cannot_compress(store, tiny_reasoner_dir):
    bare = Reasoner.load(str(tiny_reasoner_dir), device="cpu", options=ReasonerOptions(candidate_tokens="glance"))
    assert bare.precomputed_table is None
    with pytest.raises(CompressError, match="no precomputed rows"):
        compress_index(store, bare)


def test_an_image_rewritten_in_place_gets_new_tokens(tmp_path, reasoner, sample_photos_dir):
    """The fingerprint follows the content hash, which follows the bytes: a rewrite under the same path and
    text is recomputed (an index built from a dataset used to hash the path, and kept the stale tokens)."""
    import shutil

    from retrv.index.index import Index

    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copy(sample_photos_dir / "coffee.jpg", pool / "a.jpg")
    index = Index.open(tmp_path / "index", create=True, encoder="lite", device="cpu")
    item = Item("91:1", "91:1", "image,text", text="a cup", image_path=str(pool / "a.jpg"))
    index.add_items([item])
    first = compress_index(index.store, reasoner)
    assert first.computed == 1
    shutil.copy(sample_photos_dir / "rocket.jpg", pool / "a.jpg")  # same path, same text, new pixels
    assert index.add_items([item]).updated == 1
    second = compress_index(index.store, reasoner)
    assert (second.computed, second.unchanged) == (1, 0)


def test_attach_rows_gives_current_rows_only(store, reasoner, items):
    compress_index(store, reasoner)
    fresh = Candidate(items[0], 0.5)
    stale_item = dataclasses.replace(items[1], content_hash="h-changed-since")
    stale = Candidate(stale_item, 0.4)
    attach_rows(store, reasoner, [fresh, stale])
    assert fresh.precomputed is not None and set(fresh.precomputed) == {"content", "memory"}
    assert stale.precomputed is None  # its row was written for other content: the reasoner recomputes it
