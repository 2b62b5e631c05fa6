"""Walking folders: kinds, order, excludes, hidden files, symlinks, explicit files."""

from __future__ import annotations

import os

import pytest

from retrv.scan import (
    BROKEN_SYMLINK,
    SYMLINK_LOOP,
    UNSUPPORTED_TYPE,
    FileEntry,
    ScanError,
    Skip,
    kind_of,
    scan,
)


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    for rel in [
        "b.JPG",
        "a.png",
        "notes.md",
        "readme.txt",
        "data.csv",
        "z/deep/c.webp",
        "z/d.tiff",
        "y.gif",
        "m.bmp",
        "n.jpeg",
        "o.tif",
        ".hidden.jpg",
        ".cache/e.jpg",
        "thumbs/t.jpg",
        "raw/r.jpg",
    ]:
        _touch(root / rel)
    return root


def _rel(found, root):
    return [os.path.relpath(f.path, root) for f in found]


def test_kinds_and_sorted_depth_first_order(tree):
    found = list(scan([tree]))
    assert all(isinstance(f, FileEntry) for f in found)
    assert _rel(found, tree) == [
        "a.png",
        "b.JPG",
        "m.bmp",
        "n.jpeg",
        "notes.md",
        "o.tif",
        "raw/r.jpg",
        "readme.txt",
        "thumbs/t.jpg",
        "y.gif",
        "z/d.tiff",
        "z/deep/c.webp",
    ]
    kinds = {os.path.basename(f.path): f.kind for f in found}
    assert kinds["notes.md"] == kinds["readme.txt"] == "text" and kinds["b.JPG"] == "image"
    first = found[0]
    assert os.path.isabs(first.path) and first.size == 1 and first.mtime == os.stat(first.path).st_mtime
    assert list(scan([tree])) == found  # stable


def test_kind_of():
    assert [kind_of(n) for n in ("x.JPEG", "x.Md", "x.heic", "x", "x.tiff")] == ["image", "text", None, None, "image"]


def test_hidden_files_and_folders(tree):
    hidden = [f for f in scan([tree], include_hidden=True) if "/." in f.path]
    assert _rel(hidden, tree) == [".cache/e.jpg", ".hidden.jpg"]


def test_excludes_match_relative_path_and_name(tree):
    by_name = _rel(scan([tree], excludes=["thumbs", "*.md"]), tree)
    assert "thumbs/t.jpg" not in by_name and "notes.md" not in by_name and "raw/r.jpg" in by_name
    by_path = _rel(scan([tree], excludes=["z/deep/*", "raw/"]), tree)
    assert "z/deep/c.webp" not in by_path and "raw/r.jpg" not in by_path and "z/d.tiff" in by_path
    anywhere = _rel(scan([tree], excludes=["*/thumbs/*", "*/deep/*"]), tree)
    assert "thumbs/t.jpg" not in anywhere and "z/deep/c.webp" not in anywhere and len(anywhere) == 10


def test_explicit_file_is_taken_as_is(tree):
    hidden = tree / ".hidden.jpg"
    assert [f.path for f in scan([hidden], excludes=["*.jpg"])] == [str(hidden)]
    (skip,) = scan([tree / "data.csv"])
    assert isinstance(skip, Skip) and skip.reason == UNSUPPORTED_TYPE


def test_missing_path_raises(tmp_path):
    with pytest.raises(ScanError, match="no such file or folder"):
        list(scan([tmp_path / "missing"]))


def test_overlapping_roots_yield_each_file_once(tree):
    found = list(scan([tree, tree / "z", tree / "a.png"]))
    assert len(found) == len({f.path for f in found}) == 12


def test_roots_are_resolved_and_entries_stay_under_them(tmp_path, tree):
    os.symlink(tree, tmp_path / "alias")
    assert [f.path for f in scan([tmp_path / "alias"])][:1] == [str(tree / "a.png")]
    outside = _touch(tmp_path / "elsewhere" / "x.jpg")
    os.symlink(outside, tree / "linked.jpg")
    os.symlink(outside.parent, tree / "linked_dir")
    paths = [f.path for f in scan([tree])]
    assert str(tree / "linked.jpg") in paths and str(tree / "linked_dir" / "x.jpg") in paths
    assert str(outside) not in paths


def test_broken_symlinks_and_loops_are_reported(tmp_path, tree):
    os.symlink(tmp_path / "nowhere.jpg", tree / "dangling.jpg")
    os.symlink(tmp_path / "nowhere", tree / "dangling_dir")
    os.symlink("..", tree / "z" / "back")
    os.symlink("me.png", tree / "me.png")
    skips = sorted((os.path.relpath(s.path, tree), s.reason) for s in scan([tree]) if isinstance(s, Skip))
    assert skips == [
        ("dangling.jpg", BROKEN_SYMLINK),
        ("dangling_dir", BROKEN_SYMLINK),
        ("me.png", SYMLINK_LOOP),
        ("z/back", SYMLINK_LOOP),
    ]
    (skip,) = scan([tree / "dangling.jpg"])
    assert skip.reason == BROKEN_SYMLINK
