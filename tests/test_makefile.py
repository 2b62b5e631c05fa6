"""`make setup` installs plain torch unless pip has the local CPU wheel, so `make demo` works on any machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _setup_commands(python: Path) -> str:
    done = subprocess.run(["make", "-n", "-B", "setup", f"PYTHON={python}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_torch_is_plain_unless_pip_has_the_local_wheel(tmp_path):
    without = tmp_path / "python-without-wheel"
    without.write_text("#!/bin/sh\nexit 1\n")  # `pip install --dry-run --no-index torch==2.13.0` finds nothing
    with_wheel = tmp_path / "python-with-wheel"
    with_wheel.write_text("#!/bin/sh\nexit 0\n")
    for script in (without, with_wheel):
        script.chmod(0o755)
    assert '"torch" -e ".[dev]"' in _setup_commands(without)
    assert '"torch==2.13.0" -e ".[dev]"' in _setup_commands(with_wheel)
