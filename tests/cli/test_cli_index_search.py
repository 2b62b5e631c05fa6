"""The CLI end to end: build-index, search, info through Typer's runner and one real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from retrv.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def photo_index(sample_photos_dir, tmp_path_factory) -> Path:
    """The real sample photos indexed once with the offline `lite` encoder."""
    root = tmp_path_factory.mktemp("cli") / "photos-index"
    result = runner.invoke(
        app, ["build-index", str(sample_photos_dir), "--index", str(root), "--encoder", "lite", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return root


def test_build_index_summary_counts_every_photo(photo_index, sample_photos_dir):
    n = len(list(sample_photos_dir.iterdir()))
    result = runner.invoke(
        app, ["build-index", str(sample_photos_dir), "--index", str(photo_index), "--json", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "retrv.build/1"
    assert report["unchanged"] == n and report["added"] == 0 and report["encoded"] == 0


def test_search_text_ranks_the_right_photo_first(photo_index):
    result = runner.invoke(app, ["search", "a cup of coffee", "--index", str(photo_index), "-f", "--k", "3"])
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert len(paths) == 3 and Path(paths[0]).name == "coffee.jpg"


def test_search_json_schema(photo_index):
    result = runner.invoke(app, ["search", "a rocket", "--index", str(photo_index), "--json", "--k", "4"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "retrv.search/1"
    assert data["rerank"] == "none" and data["no_match"] is False
    assert [h["rank"] for h in data["hits"]] == [1, 2, 3, 4]
    assert Path(data["hits"][0]["source"]).name == "rocket.jpg"
    scores = [h["score"] for h in data["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert set(data["hits"][0]) >= {"id", "source", "modality", "score", "coarse_score", "rerank_score"}
    documented = json.loads(
        (Path(__file__).parents[2] / "docs/cli.md")
        .read_text()
        .split("## `retrv search --json`")[1]
        .split("```json")[1]
        .split("```")[0]
    )
    assert set(data) == set(documented) and set(data["hits"][0]) == set(documented["hits"][0])  # the docs' example


def test_image_query_finds_itself(photo_index, sample_photos_dir):
    image = sample_photos_dir / "chelsea.jpg"
    for args in (["search", str(image)], ["search", "--image", str(image)]):
        result = runner.invoke(app, [*args, "--index", str(photo_index), "-f", "--k", "1"])
        assert result.exit_code == 0, result.output
        assert Path(result.stdout.strip()).name == "chelsea.jpg"


def test_min_score_says_no_match(photo_index):
    result = runner.invoke(
        app, ["search", "a cup of coffee", "--index", str(photo_index), "--min-score", "1.5", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["no_match"] is True and data["hits"] == []
    for mode in ([], ["-f"], ["--json"]):  # said on stderr in every output mode; stdout holds results only
        plain = runner.invoke(
            app, ["search", "a cup of coffee", "--index", str(photo_index), "--min-score", "1.5", *mode]
        )
        assert plain.exit_code == 0 and "no match" in plain.stderr and "no match" not in plain.stdout


def test_add_and_subtract_move_the_query(photo_index):
    def top(*args: str) -> str:
        result = runner.invoke(app, ["search", *args, "--index", str(photo_index), "-f", "--k", "1"])
        assert result.exit_code == 0, result.output
        return Path(result.stdout.strip()).name

    assert top("a cup of coffee") == "coffee.jpg"
    assert top("a cup of coffee", "--subtract", "a cup of coffee", "--add", "a rocket") == "rocket.jpg"


def test_info_reports_counts(photo_index, sample_photos_dir):
    result = runner.invoke(app, ["info", "--index", str(photo_index), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["encoder"] == "lite" and data["items"] == len(list(sample_photos_dir.iterdir()))
    assert data["by_modality"] == {"image": data["items"]}
    assert data["size_bytes"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "x", "--index", "{missing}"], "no index at"),
        (["search", "--image", "{photos}/nope.jpg", "--index", "{index}"], "query image not found"),
        (["search", "x", "--index", "{index}", "--encoder", "text"], "was built with encoder"),
        (["info", "--index", "{missing}"], "no index at"),
        (["build-index", "{photos}/does-not-exist", "--index", "{missing}"], "no such file or folder"),
        (["search", "--index", "{index}"], "give a QUERY"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message, photo_index, sample_photos_dir, tmp_path):
    fill = {"missing": str(tmp_path / "missing"), "photos": str(sample_photos_dir), "index": str(photo_index)}
    result = runner.invoke(app, [a.format(**fill) for a in args])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("retrv: error:") and message in lines[0], result.stderr


def test_search_empty_index_fails_clearly(tmp_path):
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    root = tmp_path / "index"
    assert (
        runner.invoke(app, ["build-index", str(empty), "--index", str(root), "--encoder", "lite", "-q"]).exit_code == 0
    )
    result = runner.invoke(app, ["search", "anything", "--index", str(root)])
    assert result.exit_code == 1 and "is empty" in result.stderr


def test_completions_are_fresh():
    """The scripts in completions/ are what the app generates now: regenerate with `make completions`."""
    from retrv.cli.completions import script_for

    folder = Path(__file__).resolve().parents[2] / "completions"
    for shell in ("bash", "zsh", "fish"):
        assert (folder / f"retrv.{shell}").read_text() == script_for(shell, typer.main.get_command(app)), (
            f"completions/retrv.{shell} is stale"
        )
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(folder / "retrv.bash")], check=True)


def test_installed_entry_point_runs(photo_index):
    """A real subprocess of the installed `retrv` script, as a user runs it."""
    exe = Path(sys.executable).with_name("retrv")
    assert exe.exists(), "the retrv entry point is not installed (pip install -e .)"
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [str(exe), "search", "a rocket", "--index", str(photo_index), "--k", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0].split("\t")
    assert first[0] == "1" and first[2] == "image" and Path(first[3]).name == "rocket.jpg"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("retrv ")


def test_a_missing_image_path_as_query_is_warned_about(photo_index, tmp_path):
    missing = tmp_path / "photos" / "missing.jpg"
    result = runner.invoke(app, ["search", str(missing), "--index", str(photo_index), "-f", "--k", "1"])
    assert result.exit_code == 0, result.output
    assert f"warning: {str(missing)!r} looks like an image path, but there is no such file" in " ".join(
        result.stderr.split()
    )
    assert len(result.stdout.split()) == 1  # still searched, as words
    words = runner.invoke(app, ["search", "a cup of coffee", "--index", str(photo_index), "-f", "--k", "1"])
    assert words.stderr == ""


def test_an_encoder_that_matches_no_file_locks_no_index(sample_photos_dir, tmp_path):
    root = tmp_path / "text-index"
    result = runner.invoke(
        app, ["build-index", str(sample_photos_dir), "--index", str(root), "--encoder", "text", "-q"]
    )
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and result.stderr.startswith("retrv: error: ")
    assert "cannot embed images" in result.stderr and "--encoder clip" in result.stderr
    assert not root.exists()
    ok = runner.invoke(app, ["build-index", str(sample_photos_dir), "--index", str(root), "--encoder", "lite", "-q"])
    assert ok.exit_code == 0 and (root / "retrv.json").is_file()  # the same path is free for the right encoder


def test_a_name_that_is_also_an_index_folder_here_is_said(photo_index, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(photo_index, tmp_path / "here")
    result = runner.invoke(app, ["search", "a rocket", "--index", "here", "-f"])
    assert "index 'here' (from --index) is the named index at" in result.stderr
    assert "for the index in the folder here, pass ./here" in result.stderr
    folder = runner.invoke(app, ["search", "a rocket", "--index", "./here", "-f"])
    assert folder.exit_code == 0 and "named index" not in folder.stderr
