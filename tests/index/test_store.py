"""The on-disk store: meta, rows in and out, versions, concurrent readers, side tables."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from retrv.errors import IndexNotFoundError, IndexSchemaError, RetrvError
from retrv.index.store import SCHEMA_VERSION, FileState, Store, key_for_id
from retrv.items import Item

DIM = 8


def make_items(n: int, start: int = 0, modality: str = "text") -> list[Item]:
    return [
        Item(
            id=f"id{i}",
            source=f"/data/f{i}.txt",
            modality=modality,
            text=f"text {i}",
            image_path=f"/data/f{i}.jpg" if "image" in modality else None,
            mtime=1000.0 + i,
            size=10 * i,
            content_hash=f"hash{i}",
        )
        for i in range(start, start + n)
    ]


def make_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(tmp_path / "idx", encoder_spec="tiny-clip", dim=DIM)


def test_create_open_meta_round_trip(tmp_path):
    root = tmp_path / "idx"
    assert not Store.exists(root)
    created = Store.create(root, encoder_spec="openai/clip-vit-base-patch32", dim=DIM)
    assert Store.exists(root)
    assert (root / "lance").is_dir()
    on_disk = json.loads((root / "retrv.json").read_text())
    assert on_disk["encoder"] == "openai/clip-vit-base-patch32" and on_disk["dim"] == DIM
    assert on_disk["schema_version"] == SCHEMA_VERSION
    opened = Store.open(root)
    assert opened.meta == created.meta
    assert opened.count() == 0 and opened.version() == created.version()
    with pytest.raises(RetrvError, match="already exists"):
        Store.create(root, encoder_spec="x", dim=DIM)


def test_missing_index_error_says_how_to_build(tmp_path):
    with pytest.raises(
        IndexNotFoundError, match=r"no index at .*nowhere; build one with: retrv build-index FOLDER --index"
    ):
        Store.open(tmp_path / "nowhere")


def test_newer_schema_version_is_refused(tmp_path):
    root = tmp_path / "idx"
    Store.create(root, encoder_spec="x", dim=DIM)
    meta = json.loads((root / "retrv.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (root / "retrv.json").write_text(json.dumps(meta))
    with pytest.raises(IndexSchemaError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade retrv or rebuild"):
        Store.open(root)
    (root / "retrv.json").write_text("{not json")
    with pytest.raises(IndexSchemaError, match="not a valid retrv index file"):
        Store.open(root)


def test_upsert_get_update_delete(store):
    items, vectors = make_items(5, modality="image,text"), make_vectors(5)
    v1 = store.upsert(items, vectors)
    assert store.count() == 5 and v1 > 1
    assert store.get(["id3", "missing", "id0"]) == [items[3], items[0]]

    changed = Item(
        id="id3", source="/data/renamed.txt", modality="text", text="new", mtime=5.0, size=1, content_hash="h"
    )
    v2 = store.upsert([changed], vectors[:1] * 0.5)
    assert v2 == v1 + 1 and store.count() == 5
    assert store.get(["id3"]) == [changed]
    keys, stored = store.all_vectors()
    np.testing.assert_array_equal(stored[list(keys).index(key_for_id("id3"))], vectors[0] * 0.5)

    v3 = store.delete(["id1", "id4", "never-stored"])
    assert v3 == v2 + 1 and store.count() == 3
    assert [it.id for it in store.get([f"id{i}" for i in range(5)])] == ["id0", "id2", "id3"]
    assert store.delete(["never-stored"]) == v3  # nothing to delete: no new version


def test_upsert_rejects_bad_vectors_and_keeps_last_duplicate(store):
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        store.upsert(make_items(2), make_vectors(3))
    bad = make_vectors(2)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.upsert(make_items(2), bad)
    first, second = make_items(1)[0], Item(id="id0", source="/other", modality="text", text="second")
    store.upsert([first, second], make_vectors(2))
    assert store.count() == 1 and store.get(["id0"]) == [second]


def test_keys_ids_and_items_for_keys(store):
    items = make_items(4)
    store.upsert(items, make_vectors(4))
    keys = [key_for_id("id2"), -1, 12345, key_for_id("id0")]
    assert store.items_for_keys(keys) == [items[2], None, None, items[0]]
    assert sorted(store.keys().tolist()) == sorted(key_for_id(it.id) for it in items)
    assert all(0 <= key_for_id(it.id) < 2**63 for it in items)


def test_file_states_and_vectors_for_hashes(store):
    items, vectors = make_items(3), make_vectors(3)
    store.upsert(items, vectors)
    states = store.file_states()
    assert states["/data/f1.txt"] == FileState("id1", 1001.0, 10, "hash1")
    assert set(states) == {"/data/f0.txt", "/data/f1.txt", "/data/f2.txt"}
    found = store.vectors_for_hashes(["hash2", "hash0", "nope", ""])
    assert set(found) == {"hash0", "hash2"}
    np.testing.assert_array_equal(found["hash2"], vectors[2])


def test_all_vectors_and_counts(store):
    assert store.all_vectors()[1].shape == (0, DIM)
    store.upsert(make_items(3, modality="text"), make_vectors(3, seed=1))
    store.upsert(make_items(2, start=3, modality="image"), make_vectors(2, seed=2))
    store.upsert(make_items(1, start=5, modality="image,text"), make_vectors(1, seed=3))
    keys, vectors = store.all_vectors()
    assert keys.dtype == np.int64 and vectors.dtype == np.float32 and vectors.shape == (6, DIM)
    expected = dict(
        zip(
            [key_for_id(f"id{i}") for i in range(6)],
            np.concatenate([make_vectors(3, 1), make_vectors(2, 2), make_vectors(1, 3)]),
        )
    )
    for key, vector in zip(keys, vectors):
        np.testing.assert_array_equal(vector, expected[int(key)])
    assert store.counts_by_modality() == {"image": 2, "image,text": 1, "text": 3}
    assert store.size_on_disk() > 6 * DIM * 4


def test_every_upsert_is_a_readable_version(store):
    versions = [store.upsert(make_items(10, start=10 * b), make_vectors(10, seed=b)) for b in range(4)]
    assert versions == sorted(versions) and len(set(versions)) == 4
    import lancedb

    table = lancedb.connect(str(store.root / "lance")).open_table("items")
    for b, version in enumerate(versions):
        table.checkout(version)
        assert table.count_rows() == 10 * (b + 1)


def test_reader_sees_only_complete_versions_while_writing(store):
    reader = Store.open(store.root)
    seen, errors, done = [], [], threading.Event()

    def read_loop():
        while not done.is_set():
            try:
                reader.refresh()
                keys, vectors = reader.all_vectors()
                seen.append((reader.count(), len(keys), vectors.shape[0]))
            except Exception as e:
                errors.append(e)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for b in range(8):
            store.upsert(make_items(25, start=25 * b), make_vectors(25, seed=b))
    finally:
        done.set()
        thread.join()
    assert not errors
    assert seen and all(c == k == v and c % 25 == 0 for c, k, v in seen)
    reader.refresh()
    assert reader.count() == 200 and reader.version() == store.version()


def test_reader_keeps_its_version_until_refresh(store):
    store.upsert(make_items(3), make_vectors(3))
    reader = Store.open(store.root)
    store.upsert(make_items(2, start=3), make_vectors(2))
    assert reader.count() == 3
    assert reader.refresh() == store.version() and reader.count() == 5


def test_side_tables_round_trip_bit_exactly(store):
    rng = np.random.default_rng(0)
    content = rng.standard_normal((3, 2, 16)).astype(np.float16)
    relation = rng.standard_normal((3, 4, 16)).astype(np.float32)
    store.side_upsert("icm_abc", ["a", "b", "c"], {"content": content, "relation": relation})
    got = store.side_get("icm_abc", ["c", "missing", "a"])
    assert set(got) == {"c", "a"}
    for row, i in (("a", 0), ("c", 2)):
        assert got[row]["content"].dtype == np.float16 and got[row]["content"].shape == (2, 16)
        assert got[row]["content"].tobytes() == content[i].tobytes()
        assert got[row]["relation"].tobytes() == relation[i].tobytes()

    store.side_upsert("icm_abc", ["b", "d"], {"content": content[:2] * 2, "relation": relation[:2] * 2})
    assert store.side_ids("icm_abc") == {"a", "b", "c", "d"}
    assert store.side_get("icm_abc", ["b"])["b"]["content"].tobytes() == (content[0] * 2).tobytes()

    store.side_upsert("icm_other", ["a"], {"content": np.ones((1, 3), np.float32)})
    assert store.side_tables() == ["icm_abc", "icm_other"]
    assert store.side_get("icm_other", ["a", "b"])["a"]["content"].tolist() == [1.0, 1.0, 1.0]
    assert store.side_ids("icm_other") == {"a"}
    with pytest.raises(ValueError, match="holds columns"):
        store.side_upsert("icm_abc", ["e"], {"content": np.ones((1, 2, 8), np.float16), "relation": relation[:1]})

    store.side_delete("icm_abc", ["c", "never-stored"])
    assert store.side_ids("icm_abc") == {"a", "b", "d"}
    assert store.side_get("icm_abc", ["a"])["a"]["content"].tobytes() == content[0].tobytes()

    store.side_drop("icm_other")
    assert store.side_tables() == ["icm_abc"] and store.side_ids("icm_other") == set()
    assert store.side_get("icm_other", ["a"]) == {}
    assert store.count() == 0  # side tables never touch items
    reopened = Store.open(store.root)
    assert reopened.side_get("icm_abc", ["d"])["d"]["relation"].tobytes() == (relation[1] * 2).tobytes()


def test_side_table_names_are_checked(store):
    for bad in ("items", "", "a/b", "x y"):
        with pytest.raises(ValueError, match="invalid side table name"):
            store.side_upsert(bad, ["a"], {"c": np.zeros((1, 2), np.float32)})
