"""The installed `retrv` as a separate process: what only a real process shows (signals, warnings on stderr)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from retrv.cli.app import app

RETRV = [sys.executable, "-m", "retrv.cli.app"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}


def test_quiet_silences_library_warnings_too(sample_photos_dir, reasoner_checkpoint, tmp_path):
    index = tmp_path / "index"
    built = CliRunner().invoke(
        app, ["build-index", str(sample_photos_dir), "--index", str(index), "--encoder", "lite", "-q"]
    )
    assert built.exit_code == 0, built.output
    search = [
        *RETRV,
        "search",
        "a rocket",
        "--index",
        str(index),
        "--rerank",
        "reason",
        "--reasoner",
        str(reasoner_checkpoint),
        "--max-new-tokens",
        "3",
        "--force-answer",
        "--json",
        "-q",
    ]
    # Without -q this prints notices and transformers' FutureWarnings from inside the decode loop.
    quiet = subprocess.run(search, env=_env(), capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""  # the forced answer leaves nothing to warn about
    assert json.loads(quiet.stdout)["hits"]


def test_ctrl_c_stops_a_build_after_its_batch_and_still_reports(tmp_path, tiny_clip_dir):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(240):
        Image.new("RGB", (40, 30), (i, 255 - i, (7 * i) % 256)).save(folder / f"p{i:03d}.png")
    index = tmp_path / "index"
    build = [
        *RETRV,
        "build-index",
        str(folder),
        "--index",
        str(index),
        "--encoder",
        f"clip:{tiny_clip_dir}",
        "--batch-size",
        "2",
        "--json",
    ]
    process = subprocess.Popen(build, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    versions = index / "lance" / "items.lance" / "_versions"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if versions.is_dir() and len(list(versions.iterdir())) >= 4:  # a few batches are written
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    report = json.loads(stdout)
    assert report["schema"] == "retrv.build/1" and report["stopped"] is True
    assert 0 < report["added"] < 240 and report["removed"] == 0

    resumed = CliRunner().invoke(app, ["build-index", str(folder), "--index", str(index), "--json", "-q"])
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(resumed.stdout)
    assert (again["unchanged"], again["added"], again["stopped"]) == (report["added"], 240 - report["added"], False)
    assert Path(index / "retrv.json").is_file()
