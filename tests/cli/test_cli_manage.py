"""The everyday commands on real indexes: index list / rm / compact, forget, export, and search's filters,
de-duplication and previews (`pytest -k "index_list or forget or dedup or export or preview or filter"`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrv.cli.app import app
from retrv.index.catalog import indexes_dir
from retrv.index.lock import write_lock

runner = CliRunner()


def _photos(root: Path, count: int, start: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        path = root / ("sub" if i % 3 == 0 else "top") / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(path)
    return root


def _build(paths, index, encoder=None, *extra):
    args = ["build-index", *map(str, paths), "--index", str(index), "--quiet", "--json", *extra]
    result = runner.invoke(app, args + (["--encoder", encoder] if encoder else []))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("retrv: error:"), result.output
    return lines[0]


@pytest.fixture
def clip_spec(tiny_clip_dir) -> str:
    return f"clip:{tiny_clip_dir}"


@pytest.fixture
def named(tmp_path, clip_spec, request):
    """A named index (under the user data dir) of 7 photos in photos/top and photos/sub; removed afterwards."""
    name = "t-" + request.node.name.replace("[", "-").replace("]", "")[:40]
    photos = _photos(tmp_path / "photos", 7)
    _build([photos], name, clip_spec)
    yield name, photos
    shutil.rmtree(indexes_dir() / name, ignore_errors=True)


def test_index_list_shows_names_items_and_encoder(named, clip_spec):
    name, _ = named
    listed = runner.invoke(app, ["index", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert data["schema"] == "retrv.index-list/1" and data["dir"] == str(indexes_dir())
    mine = next(s for s in data["indexes"] if s["name"] == name)
    assert mine["items"] == 7 and mine["encoder"].startswith("clip:") and mine["size_bytes"] > 0
    assert mine["last_build"] is not None and mine["error"] is None
    table = runner.invoke(app, ["index", "list"])
    row = next(line for line in table.stdout.splitlines() if line.startswith(name))
    assert " 7 " in row and "clip:" in row
    names = runner.invoke(app, ["index", "list", "--names"])
    assert name in names.stdout.splitlines()


def test_index_list_names_a_damaged_index(named):
    name, _ = named
    (indexes_dir() / name / "retrv.json").write_text("{not json")
    data = json.loads(runner.invoke(app, ["index", "list", "--json"]).stdout)
    mine = next(s for s in data["indexes"] if s["name"] == name)
    assert mine["items"] is None and "not a valid retrv index file" in mine["error"]


def test_index_list_rm_asks_for_yes_and_touches_nothing_else(named):
    name, photos = named
    before = sorted(p.name for p in photos.rglob("*"))
    assert "without --yes" in _error_line(runner.invoke(app, ["index", "rm", name]))
    assert (indexes_dir() / name / "retrv.json").is_file()
    result = runner.invoke(app, ["index", "rm", name, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"schema": "retrv.index-rm/1", "removed": str(indexes_dir() / name), "left": []}
    assert not (indexes_dir() / name).exists()
    assert sorted(p.name for p in photos.rglob("*")) == before
    assert "no index at" in _error_line(runner.invoke(app, ["index", "rm", name, "--yes"]))


def test_index_list_rm_refused_while_a_build_writes(named):
    name, _ = named
    held, release = threading.Event(), threading.Event()

    def build() -> None:
        with write_lock(indexes_dir() / name):
            held.set()
            release.wait(30)

    writer = threading.Thread(target=build)
    writer.start()
    try:
        assert held.wait(30)
        for args in (["index", "rm", name, "--yes"], ["index", "compact", "--index", name]):
            assert "being written by a running retrv" in _error_line(runner.invoke(app, args))
        assert (indexes_dir() / name / "retrv.json").is_file()
    finally:
        release.set()
        writer.join()
    search = runner.invoke(app, ["search", "x", "--index", name, "-f", "--k", "3"])
    assert search.exit_code == 0 and len(search.stdout.split()) == 3


def test_index_list_rm_keeps_a_folder_with_other_files(tmp_path, clip_spec):
    folder = tmp_path / "my-index"
    _build([_photos(tmp_path / "photos", 2)], folder, clip_spec)
    (folder / "my notes.txt").write_text("mine")
    result = runner.invoke(app, ["index", "rm", str(folder), "--yes"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["my notes.txt"]
    assert "kept the folder" in result.stdout


def test_index_list_unknown_names_are_one_line_errors():
    for args in (["search", "x"], ["index", "compact"], ["forget", "/tmp"], ["export", "/tmp/x.parquet"]):
        assert "no index at" in _error_line(runner.invoke(app, [*args, "--index", "no-such-index-here"]))


def test_forget_then_build_index_readds_exactly_the_forgotten(named):
    name, photos = named
    ids_before = _ids(name)
    result = runner.invoke(app, ["forget", str(photos / "sub"), "--index", name, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "retrv.forget/1" and report["forgotten"] == 3
    assert all(p.is_file() for p in (photos / "sub").iterdir())  # the files stay
    remaining = runner.invoke(app, ["search", "x", "--index", name, "-f", "--k", "50"]).stdout.split()
    assert len(remaining) == 4 and not any("/sub/" in p for p in remaining)
    rebuilt = _build([photos], name)
    assert rebuilt["added"] == 3 and rebuilt["unchanged"] == 4 and rebuilt["removed"] == 0
    assert _ids(name) == ids_before
    assert "no item of index" in _error_line(runner.invoke(app, ["forget", "/nowhere/at/all", "--index", name]))


def _ids(index: str) -> set[str]:
    from retrv.index.index import Index

    return {r["id"] for r in Index.open(index).to_arrow(["id"]).to_pylist()}


def test_index_list_compact_frees_old_versions_and_keeps_results(tmp_path, clip_spec):
    folder, photos = tmp_path / "index", tmp_path / "photos"
    for round_ in range(4):
        _build([_photos(photos, 3, start=3 * round_)], folder, clip_spec)
    query = ["search", "x", "--index", str(folder), "--json", "--k", "12"]
    before = json.loads(runner.invoke(app, query).stdout)["hits"]
    result = runner.invoke(app, ["index", "compact", "--index", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "retrv.index-compact/1" and report["bytes_freed"] > 0
    assert report["bytes_freed"] == report["bytes_before"] - report["bytes_after"]
    versions = list((folder / "lance" / "items.lance" / "_versions").glob("*.manifest"))
    assert len(versions) == 1
    after = json.loads(runner.invoke(app, query).stdout)["hits"]
    assert [(h["id"], round(h["score"], 5)) for h in after] == [(h["id"], round(h["score"], 5)) for h in before]


def test_export_cli_writes_each_format(named, tmp_path):
    name, _ = named
    for out in ("items.parquet", "items.jsonl", "vectors"):
        args = ["export", str(tmp_path / out), "--index", name, "--json", "--quiet"]
        result = runner.invoke(app, args + (["--format", "npy"] if out == "vectors" else []))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["schema"] == "retrv.export/1" and report["items"] == 7 and report["files"]
        assert all(Path(f).exists() for f in report["files"])
    assert not list(tmp_path.glob("*.partial"))
    assert "cannot tell the format" in _error_line(runner.invoke(app, ["export", str(tmp_path / "x.csv"), "-i", name]))
    assert "exists" in _error_line(runner.invoke(app, ["export", str(tmp_path / "items.jsonl"), "-i", name]))


def test_filter_flags_on_the_command_line(named):
    name, photos = named
    under = runner.invoke(app, ["search", "x", "--index", name, "-f", "--under", str(photos / "sub"), "--k", "50"])
    assert under.exit_code == 0, under.output
    assert sorted(Path(p).name for p in under.stdout.split()) == ["p0.png", "p3.png", "p6.png"]
    old = (photos / "top" / "p1.png").stat().st_mtime
    os.utime(photos / "top" / "p1.png", (old, 946_684_800.0))  # 2000-01-01
    _build([photos], name)
    dated = runner.invoke(app, ["search", "x", "--index", name, "-f", "--until", "2000-01", "--k", "50"])
    assert [Path(p).name for p in dated.stdout.split()] == ["p1.png"]
    since = runner.invoke(app, ["search", "x", "--index", name, "-f", "--since", "2001", "--modality", "image"])
    assert "p1.png" not in since.stdout and len(since.stdout.split()) == 6
    empty = runner.invoke(app, ["search", "x", "--index", name, "--since", "1990", "--until", "1991"])
    assert empty.exit_code == 0 and "no item passes the filters" in empty.stderr
    assert "--since: expected a date" in _error_line(runner.invoke(app, ["search", "x", "-i", name, "--since", "soon"]))
    outside = runner.invoke(app, ["search", "x", "-i", name, "--under", str(photos.parent / "elsewhere")])
    assert "holds no item at or below it" in _error_line(outside)
    both = runner.invoke(app, ["search", "x", "-i", name, "--all-copies", "--dedup", "0.97"])
    assert "give one of them" in _error_line(both)


def test_dedup_on_the_command_line(named):
    name, photos = named
    for i in range(3):
        shutil.copy(photos / "top" / "p1.png", photos / f"copy{i}.png")
    _build([photos], name)
    query = ["search", str(photos / "top" / "p1.png"), "--index", name, "--json", "--k", "3"]
    first = json.loads(runner.invoke(app, query).stdout)["hits"][0]
    assert len(first["copies"]) == 3
    every = json.loads(runner.invoke(app, [*query, "--all-copies"]).stdout)["hits"]
    assert all(h["copies"] == [] for h in every) and len({Path(h["source"]).name for h in every}) == 3


def test_preview_protocols_on_the_command_line(named):
    name, _ = named
    base = ["search", "x", "--index", name, "--k", "2", "--preview"]
    starts = {"kitty": "\x1b_Gf=100,a=T", "iterm2": "\x1b]1337;File=inline=1", "sixel": "\x1bPq"}
    for protocol, start in starts.items():
        result = runner.invoke(app, [*base, "--preview-protocol", protocol])
        assert result.exit_code == 0, result.output
        assert result.stdout.count(start) == 2 and result.stdout.startswith("  1  ")
    plain = runner.invoke(app, base)  # stdout is not a terminal here: said, and the results come plainly
    assert plain.exit_code == 0 and "not a terminal" in plain.stderr and "\x1b" not in plain.stdout
    assert len(plain.stdout.splitlines()) == 2
    assert "--preview draws on a terminal" in _error_line(runner.invoke(app, [*base, "--json"]))


def _bash_complete(words: list[str], cwd: Path) -> list[str]:
    script = Path(__file__).parents[2] / "completions" / "retrv.bash"
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source '{script}'; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _retrv; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", program], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_index_list_names_complete_in_bash_and_paths_keep_their_spaces(named, tmp_path):
    name, _ = named
    here = tmp_path / "here"
    (here / "My Vacation").mkdir(parents=True)
    (here / "Bob's party").mkdir()
    assert name in _bash_complete(["retrv", "search", "--index", name[:6]], here)
    assert name in _bash_complete(["retrv", "index", "rm", name[:6]], here)
    assert _bash_complete(["retrv", "search", "--under", "My"], here) == ["My Vacation"]
    assert sorted(_bash_complete(["retrv", "build-index", ""], here)) == ["Bob's party", "My Vacation"]


def test_filter_echoed_in_json_and_said_even_when_quiet(named):
    name, photos = named
    args = ["search", "x", "--index", name, "--under", str(photos / "sub"), "--since", "@0", "--json"]
    document = json.loads(runner.invoke(app, [*args, "--dedup", "0.99"]).stdout)
    assert document["filters"] == {
        "under": [str(photos / "sub")],
        "since": 0.0,
        "until": None,
        "modality": None,
        "all_copies": False,
        "dedup": 0.99,
    }
    empty = runner.invoke(app, ["search", "x", "--index", name, "--until", "1990", "-q"])
    assert empty.exit_code == 0 and "no item passes the filters" in empty.stderr


def test_preview_protocol_implies_preview(named):
    name, _ = named
    result = runner.invoke(app, ["search", "x", "--index", name, "--k", "1", "--preview-protocol", "iterm2"])
    assert result.exit_code == 0 and "\x1b]1337;File=inline=1" in result.stdout


def test_export_into_a_missing_folder_is_one_line(named, tmp_path):
    name, _ = named
    for out in (tmp_path / "no" / "x.parquet", tmp_path / "no" / "x.jsonl"):
        assert "there is no folder" in _error_line(runner.invoke(app, ["export", str(out), "-i", name]))
    assert not (tmp_path / "no").exists()
