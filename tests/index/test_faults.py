"""Nothing lost, nothing silently wrong: the index under stale caches, races, empty roots, hostile names,
damaged files and a full disk."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrv.cli.app import app
from retrv.errors import IndexDamagedError
from retrv.index.catalog import repair_index
from retrv.index.index import Index
from retrv.index.store import Store

runner = CliRunner()


def _photos(folder: Path, make_photo, seeds) -> list[Path]:
    return [make_photo(folder / f"p{seed:04d}.png", seed=seed) for seed in seeds]


def _open(root: Path, clip: Path) -> Index:
    return Index.open(root, create=True, encoder=f"clip:{clip}", device="cpu")


def _top(index: Index, image: Path) -> tuple[str, float]:
    hits = index.search(_image_query(image), k=1)
    return hits[0].source, hits[0].score


def _image_query(image: Path):
    from retrv.items import Query

    return Query(image=str(image))


# ---------------------------------------------------------------- the ANN cache is bound to its table


def test_stale_ann_cache_of_a_re_created_index_is_not_trusted(tmp_path, tiny_clip_dir, make_photo):
    root = tmp_path / "index"
    first = _open(root, tiny_clip_dir)
    first.add([_photos_dir(tmp_path / "a", make_photo, range(0, 12))], batch_size=4)
    version = first.store.version()
    assert (root / "ann").is_dir() and first.search(_image_query(tmp_path / "a" / "p0003.png"), k=1)
    # The index is created again at the same path (its retrv.json removed), from other photos, in batches
    # until its table reaches the version the old cache was built for.
    (root / "retrv.json").unlink()
    b = _photos_dir(tmp_path / "b", make_photo, range(100, 112))
    second = _open(root, tiny_clip_dir)
    second.add([b], batch_size=12)
    for seed in range(200, 260):
        if second.store.version() >= version:
            break
        second.add([_photos_dir(b, make_photo, [seed])], batch_size=1)
    assert second.store.version() == version
    fresh = Index.open(root, device="cpu")  # a new process: only the cache on disk to go by
    source, score = _top(fresh, b / "p0105.png")
    assert Path(source).name == "p0105.png" and score == pytest.approx(1.0, abs=1e-4)


def test_stale_ann_cache_after_a_rollback_is_not_trusted(tmp_path, tiny_clip_dir, make_photo):
    root = tmp_path / "index"
    folder = _photos_dir(tmp_path / "photos", make_photo, range(0, 8))
    index = _open(root, tiny_clip_dir)
    index.add([folder], batch_size=4)
    version = index.store.version()
    manifests = sorted((root / "lance" / "items.lance" / "_versions").glob("*.manifest"))
    manifests[0].unlink()  # the newest version (names count down) is gone: the table is one version back
    (root / "lance" / "items.lance" / "_versions" / "latest_version_hint.json").unlink(missing_ok=True)
    new = make_photo(folder / "new.png", seed=999)
    again = Index.open(root, device="cpu")
    again.add([folder], batch_size=64)  # writes the lost batch and the new photo: the same version number again
    assert again.store.version() == version
    source, score = _top(Index.open(root, device="cpu"), new)
    assert source == str(new) and score == pytest.approx(1.0, abs=1e-4)


def _photos_dir(folder: Path, make_photo, seeds) -> Path:
    _photos(folder, make_photo, seeds)
    return folder


# ---------------------------------------------------------------- two first builds of one new index at once


def _build_in_turn(clip: str, roots: list[str], folder: str, barrier, results) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from retrv.index.index import Index

    for root in roots:
        index = Index.open(root, create=True, encoder=f"clip:{clip}", device="cpu")
        _ = index.encoder
        barrier.wait(timeout=120)  # both processes start this build at the same instant
        try:
            results.put((root, folder, index.add([folder], batch_size=1).added, None))
        except Exception as exc:  # reported to the test, which fails on it
            results.put((root, folder, 0, f"{type(exc).__name__}: {exc}"))


def test_concurrent_create_of_a_new_index_keeps_both_builds(tmp_path, tiny_clip_dir, make_photo):
    folders = [_photos_dir(tmp_path / name, make_photo, [seed]) for name, seed in (("a", 1), ("b", 2))]
    roots = [str(tmp_path / f"new-{trial}") for trial in range(6)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_build_in_turn, args=(str(tiny_clip_dir), roots, str(folder), barrier, results))
        for folder in folders
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in range(2 * len(roots))]
    for w in workers:
        w.join(timeout=60)
    assert [o for o in outcomes if o[3] is not None] == []
    assert all(added == 1 for _, _, added, _ in outcomes)
    for root in roots:  # each new index holds both photos: neither build's table replaced the other's
        store = Store.open(root)
        assert store.count() == 2, root
        assert {Path(s).parent.name for s in store.file_states()} == {"a", "b"}


# ---------------------------------------------------------------- an empty root removes nothing by itself


def test_prune_guard_keeps_the_items_of_a_root_that_came_up_empty(tmp_path, tiny_clip_dir, make_photo):
    mount = _photos_dir(tmp_path / "mnt" / "photos", make_photo, range(6))
    other = _photos_dir(tmp_path / "other", make_photo, range(50, 60))
    root = tmp_path / "index"
    index = _open(root, tiny_clip_dir)
    index.add([mount, other])
    for photo in mount.iterdir():  # the drive is not mounted: the folder is there, and empty
        photo.unlink()
    report = index.add([mount])
    assert (report.removed, len(report.held_back)) == (0, 6) and "every one of the 6 items" in report.held_back_why
    assert index.store.count() == 16
    result = runner.invoke(app, ["build-index", str(mount), "--index", str(root), "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and (data["removed"], data["held_back"]) == (0, 6)
    assert "run again with --prune" in " ".join(result.stderr.split())
    for photo in sorted(other.iterdir())[:9]:  # more than half of the index (9 of 16) gone in one build
        photo.unlink()
    held = index.add([other])
    assert len(held.held_back) == 9 and "9 of the index's 16 items" in held.held_back_why and index.store.count() == 16
    assert index.add([mount], prune=True).removed == 6  # said on purpose: removed
    pruned = runner.invoke(app, ["build-index", str(other), "--index", str(root), "--prune", "--json"])
    assert json.loads(pruned.stdout)["removed"] == 9 and Store.open(root).count() == 1
    make_photo(mount / "back.png", seed=3)  # a root that lost only some of its items is pruned as before
    index.add([mount])
    (mount / "back.png").unlink()
    make_photo(mount / "stays.png", seed=4)
    assert index.add([mount]).removed == 1


# ---------------------------------------------------------------- names a build must survive


def _remove_deep(top: bytes) -> None:
    """Remove a tree without recursion (os.walk and shutil.rmtree recurse once per level)."""
    stack = [(top, False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            os.rmdir(path)
            continue
        stack.append((path, True))
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)


def test_non_utf8_names_and_a_tree_1200_levels_deep_do_not_stop_a_build(tmp_path, tiny_clip_dir, make_photo, request):
    folder = _photos_dir(tmp_path / "photos", make_photo, range(3))
    bad = os.fsencode(folder) + b"/bad\xff\xfename.png"
    shutil.copy(folder / "p0000.png", bad)
    deep = os.fsencode(folder)
    for _ in range(1200):  # os.makedirs itself recurses once per level
        deep += b"/d"
        os.mkdir(deep)
    request.addfinalizer(lambda: _remove_deep(os.fsencode(folder) + b"/d"))  # so does shutil.rmtree
    make_photo(Path(os.fsdecode(deep)) / "deepest.png", seed=77)
    root = tmp_path / "index"
    result = runner.invoke(
        app, ["build-index", str(folder), "--index", str(root), "--encoder", f"clip:{tiny_clip_dir}", "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.encode("utf-8"))  # valid UTF-8 on the wire
    assert report["added"] == 4  # the three photos and the deepest one
    skipped = report["skipped"]
    assert [s["reason"] for s in skipped] == ["file name is not UTF-8"]
    assert os.fsencode(skipped[0]["path"]) == bad  # the JSON escape decodes back to the very name
    verbose = runner.invoke(app, ["build-index", str(folder), "--index", str(root), "--verbose"])
    assert "bad\\xff\\xfename.png: file name is not UTF-8" in verbose.stderr


# ---------------------------------------------------------------- output scripts and terminals can trust


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory, tiny_clip_dir):
    from PIL import Image

    folder = tmp_path_factory.mktemp("hostile")
    names = ["two\nlines.png", "tab\there.png", "esc\x1b[31mred.png", "plain.png"]
    for i, name in enumerate(names):
        Image.new("RGB", (40, 30), (60 * i, 255 - 60 * i, 90)).save(folder / name, format="PNG")
    root = tmp_path_factory.mktemp("hostile-index") / "index"
    Index.open(root, create=True, encoder=f"clip:{tiny_clip_dir}", device="cpu").add([folder])
    return root, folder, names


def test_null_separated_paths_are_exact_and_line_outputs_escape_control_characters(hostile_index):
    root, folder, names = hostile_index
    query = str(folder / "plain.png")
    null = runner.invoke(app, ["search", query, "--index", str(root), "-0", "--k", "4"])
    assert null.exit_code == 0, null.output
    assert sorted(null.stdout_bytes.split(b"\0")[:-1]) == sorted(os.fsencode(folder / n) for n in names)
    lines = runner.invoke(app, ["search", query, "--index", str(root), "-f", "--k", "4"]).stdout
    assert len(lines.splitlines()) == 4 and "\x1b" not in lines and "\t" not in lines
    assert {str(folder / "two\\nlines.png"), str(folder / "tab\\there.png"), str(folder / "esc\\x1b[31mred.png")} < set(
        lines.splitlines()
    )
    tsv = runner.invoke(app, ["search", query, "--index", str(root), "--k", "4"]).stdout
    assert all(len(line.split("\t")) == 4 for line in tsv.splitlines()) and "\x1b" not in tsv
    as_json = json.loads(runner.invoke(app, ["search", query, "--index", str(root), "--json", "--k", "4"]).stdout)
    assert sorted(h["source"] for h in as_json["hits"]) == sorted(str(folder / n) for n in names)  # JSON: exact


def test_null_separated_table_on_a_terminal_shows_no_raw_escape(hostile_index):
    from retrv.cli.render import render_ranking
    from retrv.engine import Engine

    root, folder, _ = hostile_index
    ranking = Engine(Index.open(root, device="cpu")).search(_image_query(folder / "plain.png"), k=4)
    import io
    from contextlib import redirect_stdout
    from unittest import mock

    out = io.StringIO()
    with redirect_stdout(out), mock.patch.object(sys.stdout, "isatty", return_value=True, create=True):
        render_ranking(ranking)
    assert "\x1b[31m" not in out.getvalue().replace("\x1b[1m", "") and "esc\\x1b[31mred.png" in out.getvalue()


# ---------------------------------------------------------------- damaged files are named and repaired


def _corrupt_newest_fragment(root: Path) -> Path:
    data = root / "lance" / "items.lance" / "data"
    newest = max(data.glob("*.lance"), key=lambda p: p.stat().st_mtime_ns)
    with open(newest, "r+b") as f:
        f.truncate(100)
    shutil.rmtree(root / "ann", ignore_errors=True)
    return newest


def test_repair_of_a_truncated_fragment_loses_nothing_the_folder_gives_back(tmp_path, tiny_clip_dir, make_photo):
    folder = _photos_dir(tmp_path / "photos", make_photo, range(9))
    root = tmp_path / "index"
    _open(root, tiny_clip_dir).add([folder], batch_size=3)
    damaged = _corrupt_newest_fragment(root)
    with pytest.raises(IndexDamagedError) as info:
        Index.open(root, device="cpu").search(_image_query(folder / "p0001.png"), k=1)
    assert str(damaged) in str(info.value) and "retrv index repair" in str(info.value)
    cli = runner.invoke(app, ["search", "x", "--index", str(root)])
    assert cli.exit_code == 1 and cli.stderr.count("\n") == 1 and str(damaged) in cli.stderr  # one line, no traceback

    repaired = runner.invoke(app, ["index", "repair", "--index", str(root), "--json"])
    assert repaired.exit_code == 0, repaired.output
    report = json.loads(repaired.stdout)
    assert report["items"] == 6 and report["version_restored"] < report["version_before"]
    assert str(damaged) in report["moved"] and (root / "damaged").is_dir()
    again = Index.open(root, device="cpu").add([folder])
    assert (again.added, again.unchanged) == (3, 6)  # the lost batch comes back from the folder
    index = Index.open(root, device="cpu")
    assert index.store.count() == 9
    for photo in sorted(folder.iterdir()):
        assert _top(index, photo)[0] == str(photo)


def test_repair_of_a_truncated_manifest_and_a_deleted_fragment(tmp_path, tiny_clip_dir, make_photo):
    folder = _photos_dir(tmp_path / "photos", make_photo, range(6))
    root = tmp_path / "index"
    _open(root, tiny_clip_dir).add([folder], batch_size=2)
    newest_manifest = min((root / "lance" / "items.lance" / "_versions").glob("*.manifest"))
    newest_manifest.write_bytes(newest_manifest.read_bytes()[:40])
    with pytest.raises(IndexDamagedError, match=str(newest_manifest)):
        Store.open(root).count()
    report = repair_index(root)
    assert report.items == 4 and str(newest_manifest) in report.moved
    assert Index.open(root, device="cpu").add([folder]).added == 2

    oldest = min((root / "lance" / "items.lance" / "data").glob("*.lance"), key=lambda p: p.stat().st_mtime_ns)
    oldest.unlink()  # the first batch's file: every version since uses it
    shutil.rmtree(root / "ann")
    with pytest.raises(IndexDamagedError, match="is missing"):
        Index.open(root, device="cpu").search(_image_query(folder / "p0000.png"), k=1)
    report = repair_index(root)
    assert report.version_restored is not None and report.items == 0  # only the empty first version reads
    assert Index.open(root, device="cpu").add([folder]).added == 6


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_line_and_leaves_the_index_readable(tmp_path, tiny_clip_dir, make_photo):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        folder = _photos_dir(tmp_path / "photos", make_photo, range(40))
        root = mount / "index"
        first = runner.invoke(
            app,
            [
                "build-index",
                str(folder / "p0000.png"),
                "--index",
                str(root),
                "--encoder",
                f"clip:{tiny_clip_dir}",
                "-q",
            ],
        )
        assert first.exit_code == 0, first.output
        full = runner.invoke(app, ["build-index", str(folder), "--index", str(root), "--batch-size", "1", "-q"])
        assert full.exit_code == 1, full.output
        assert full.stderr.startswith("retrv: error: no space left") and full.stderr.count("\n") == 1
        kept = Store.open(root).count()
        assert 1 <= kept < 40  # what was committed before the disk filled stays readable
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ---------------------------------------------------------------- untrusted input has bounds


def test_a_k_far_above_the_index_size_does_not_allocate_for_it(tmp_path, tiny_clip_dir, make_photo):
    folder = _photos_dir(tmp_path / "photos", make_photo, range(5))
    index = _open(tmp_path / "index", tiny_clip_dir)
    index.add([folder])
    hits = index.search(_image_query(folder / "p0002.png"), k=10**12)  # allocating for k would need 12 TB
    assert len(hits) == 5 and hits[0].source == str(folder / "p0002.png")
    assert np.isfinite([h.score for h in hits]).all()
