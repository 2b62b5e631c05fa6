"""The incremental build, asserted by counting what went through the (real, tiny) model."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

from retrv.images import load_image
from retrv.index.build import build_index
from retrv.index.documents import PREVIEW_CHARS, chunk_text
from retrv.items import file_item_id as item_id


def _vectors(store, ids):
    by_id = {}
    keys, vectors = store.all_vectors()
    from retrv.index.store import key_for_id

    lookup = {int(k): v for k, v in zip(keys, vectors)}
    for i in ids:
        by_id[i] = lookup[key_for_id(i)]
    return by_id


def _sources(store):
    return set(store.file_states())


def test_first_build_encodes_all_second_nothing(photo_dir, counting, new_store):
    store = new_store(counting)
    first = build_index(store, counting, [photo_dir], batch_size=4)
    paths = sorted(str(p) for p in photo_dir.rglob("*.jpg"))
    assert (first.added, first.encoded, first.reused, first.unchanged, first.removed) == (6, 6, 0, 0, 0)
    assert counting.images == 6 and counting.calls == 2  # batches of 4 + 2
    assert first.skipped == [] and not first.stopped
    assert _sources(store) == set(paths)

    items = store.get([item_id(p) for p in paths])
    assert [it.source for it in items] == paths
    assert {it.modality for it in items} == {"image"} and all(it.image_path == it.source for it in items)
    assert all(len(it.content_hash) == 32 and it.size == os.stat(it.source).st_size for it in items)
    # The pipeline's vector is the encoder's own embedding of the decoded file.
    direct = counting.inner.encode_images([load_image(p) for p in paths])
    stored = _vectors(store, [item_id(p) for p in paths])
    np.testing.assert_allclose(np.stack([stored[item_id(p)] for p in paths]), direct, atol=1e-5)

    counting.reset()
    second = build_index(store, counting, [photo_dir], batch_size=4)
    assert (second.added, second.updated, second.encoded, second.unchanged, second.removed) == (0, 0, 0, 6, 0)
    assert counting.calls == 0
    assert store.count() == 6


def test_changed_content_is_reencoded(photo_dir, counting, new_store, make_photo):
    store = new_store(counting)
    build_index(store, counting, [photo_dir])
    target = photo_dir / "p2.jpg"
    before = _vectors(store, [item_id(str(target))])[item_id(str(target))]
    make_photo(target, seed=99)
    os.utime(target, (1_000_000_000, 1_000_000_000))  # a different mtime even on coarse clocks
    counting.reset()
    report = build_index(store, counting, [photo_dir])
    assert (report.updated, report.added, report.encoded, report.reused, report.unchanged) == (1, 0, 1, 0, 5)
    assert counting.images == 1 and store.count() == 6
    after = _vectors(store, [item_id(str(target))])[item_id(str(target))]
    assert not np.allclose(before, after)
    assert store.get([item_id(str(target))])[0].mtime == 1_000_000_000


def test_touched_same_content_reuses_its_vector(photo_dir, counting, new_store):
    store = new_store(counting)
    build_index(store, counting, [photo_dir])
    os.utime(photo_dir / "p0.jpg", (1_000_000_000, 1_000_000_000))
    counting.reset()
    report = build_index(store, counting, [photo_dir])
    assert (report.updated, report.reused, report.encoded, report.unchanged) == (1, 1, 0, 5)
    assert counting.calls == 0


def test_renamed_file_reuses_vector(photo_dir, counting, new_store):
    store = new_store(counting)
    build_index(store, counting, [photo_dir])
    old, new = photo_dir / "p1.jpg", photo_dir / "sub" / "renamed.jpg"
    vector = _vectors(store, [item_id(str(old))])[item_id(str(old))]
    os.rename(old, new)
    counting.reset()
    report = build_index(store, counting, [photo_dir])
    assert (report.added, report.reused, report.encoded, report.removed, report.unchanged) == (1, 1, 0, 1, 5)
    assert counting.calls == 0
    assert store.count() == 6 and store.get([item_id(str(old))]) == []
    np.testing.assert_array_equal(_vectors(store, [item_id(str(new))])[item_id(str(new))], vector)


def test_copied_file_reuses_vector(photo_dir, counting, new_store):
    store = new_store(counting)
    build_index(store, counting, [photo_dir])
    shutil.copy(photo_dir / "p3.jpg", photo_dir / "copy.jpg")
    counting.reset()
    report = build_index(store, counting, [photo_dir])
    assert (report.added, report.reused, report.encoded, report.removed) == (1, 1, 0, 0)
    assert counting.calls == 0 and store.count() == 7


def test_deleted_file_is_removed(photo_dir, counting, new_store):
    store = new_store(counting)
    build_index(store, counting, [photo_dir])
    (photo_dir / "sub" / "p5.jpg").unlink()
    report = build_index(store, counting, [photo_dir])
    assert (report.removed, report.unchanged, report.encoded) == (1, 5, 0)
    assert store.count() == 5 and str(photo_dir / "sub" / "p5.jpg") not in _sources(store)


def test_duplicates_within_one_build_are_encoded_once(tmp_path, counting, new_store, make_photo):
    make_photo(tmp_path / "d" / "a.png", seed=1)
    shutil.copy(tmp_path / "d" / "a.png", tmp_path / "d" / "b.png")
    make_photo(tmp_path / "d" / "c.png", seed=2)
    store = new_store(counting)
    report = build_index(store, counting, [tmp_path / "d"])
    assert (report.added, report.encoded, report.reused) == (3, 2, 1)
    assert counting.images == 2 and store.count() == 3


def test_removal_is_limited_to_the_given_roots(tmp_path, photo_dir, counting, new_store):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Notes\n\nA red bicycle.")
    (docs / "b.txt").write_text("Shopping list: milk, eggs.")
    store = new_store(counting)
    build_index(store, counting, [photo_dir])
    first = build_index(store, counting, [docs])
    assert (first.added, first.removed) == (2, 0) and store.count() == 8
    (docs / "b.txt").unlink()
    (photo_dir / "p0.jpg").unlink()  # not under ./docs: must survive a docs-only build
    report = build_index(store, counting, [docs])
    assert (report.removed, report.unchanged) == (1, 1)
    assert store.count() == 7 and str(photo_dir / "p0.jpg") in _sources(store)
    # A file under a root but outside the scanned subtree is not a "vanished" file of that root.
    assert build_index(store, counting, [photo_dir / "sub"]).removed == 0
    assert build_index(store, counting, [photo_dir]).removed == 1


def test_text_document_is_one_item_with_mean_of_chunks(tmp_path, counting, new_store):
    paragraphs = [f"Paragraph {i}. " + "word " * 150 for i in range(8)]  # ~760 chars each -> 8 chunks
    text = "\n\n".join(paragraphs)
    doc = tmp_path / "docs" / "long.md"
    doc.parent.mkdir()
    doc.write_text(text)
    store = new_store(counting)
    report = build_index(store, counting, [doc.parent], batch_size=32)
    assert (report.added, report.encoded) == (1, 1)
    chunks = chunk_text(text)
    assert len(chunks) == 8 and counting.texts == 8
    item = store.get([item_id(str(doc))])[0]
    assert item.modality == "text" and item.image_path is None
    assert item.text == text[:PREVIEW_CHARS]
    mean = counting.inner.encode_texts(chunks).mean(axis=0)
    expected = mean / np.linalg.norm(mean)
    np.testing.assert_allclose(_vectors(store, [item.id])[item.id], expected, atol=1e-5)


def test_text_only_encoder_indexes_documents_and_skips_images(tmp_path, photo_dir, minilm_encoder, new_store):
    docs = photo_dir / "notes"
    docs.mkdir()
    (docs / "cat.txt").write_text("My cat sleeps on the sofa all afternoon and purrs when stroked.")
    (docs / "rocket.md").write_text("The rocket launch was delayed by strong winds at the space centre.")
    store = new_store(minilm_encoder)
    report = build_index(store, minilm_encoder, [photo_dir])
    assert (report.added, report.encoded) == (2, 2)
    assert report.skipped_by_reason() == {"the encoder cannot embed images": 6}
    query = minilm_encoder.encode_texts(["a kitten"])[0]
    stored = _vectors(store, [item_id(str(docs / "cat.txt")), item_id(str(docs / "rocket.md"))])
    scores = {k: float(v @ query) for k, v in stored.items()}
    assert scores[item_id(str(docs / "cat.txt"))] > scores[item_id(str(docs / "rocket.md"))]


def _many_photos(root, make_photo, n):
    for i in range(n):
        make_photo(root / f"img{i:02d}.jpg", seed=100 + i)
    return root


def test_should_stop_keeps_written_batches_and_resume_encodes_the_rest(tmp_path, counting, new_store, make_photo):
    root = _many_photos(tmp_path / "many", make_photo, 10)
    store = new_store(counting)
    batches = []

    def count_batches(event):
        if event.stage == "encode":
            batches.append(event)

    def stop():
        return len(batches) >= 2

    report = build_index(store, counting, [root], batch_size=3, progress=count_batches, should_stop=stop)
    assert report.stopped and report.encoded == 6 and store.count() == 6
    counting.reset()
    resumed = build_index(store, counting, [root], batch_size=3)
    assert (resumed.encoded, resumed.added, resumed.unchanged, resumed.removed) == (4, 4, 6, 0)
    assert counting.images == 4 and store.count() == 10


def test_keyboard_interrupt_leaves_index_readable_and_resumable(tmp_path, counting, new_store, make_photo):
    from retrv.index.store import Store

    root = _many_photos(tmp_path / "many", make_photo, 10)
    store = new_store(counting)
    seen = []

    def interrupt_after_second_batch(event):
        if event.stage == "encode":
            seen.append(event)
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(store, counting, [root], batch_size=3, loader_threads=2, progress=interrupt_after_second_batch)
    assert not [t for t in threading.enumerate() if t.name.startswith("retrv-loader")]  # loaders shut down
    reopened = Store.open(store.root)
    assert reopened.count() == 6
    counting.reset()
    resumed = build_index(reopened, counting, [root], batch_size=3)
    assert (resumed.encoded, resumed.unchanged) == (4, 6)
    assert counting.images == 4 and reopened.count() == 10


def test_progress_events(photo_dir, counting, new_store):
    events = []
    build_index(new_store(counting), counting, [photo_dir], batch_size=4, progress=events.append)
    stages = [e.stage for e in events]
    assert stages == ["scan", "hash", "encode", "encode"]
    assert (events[0].done, events[0].total) == (6, 6)
    assert [(e.done, e.total) for e in events if e.stage == "encode"] == [(4, 6), (6, 6)]


def test_missing_path_fails_before_writing(tmp_path, counting, new_store):
    from retrv.errors import RetrvError

    store = new_store(counting)
    version = store.version()
    with pytest.raises(RetrvError, match="no such file or folder"):
        build_index(store, counting, [tmp_path / "nope"])
    assert store.version() == version
