"""What every command promises: --help readable at 80 columns, global flags anywhere, settings that say where
they came from, one error contract (RetrvError: one line, exit 1; a bug: its traceback)."""

from __future__ import annotations

import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from retrv.cli.app import app, hoist_global_flags

runner = CliRunner()


def _commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = [()]

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            if not sub.hidden:
                found.append((*path, name))
                walk(sub, (*path, name))

    walk(root, ())
    return found


def _command(path: tuple[str, ...]) -> click.Command:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "retrv")
def test_help_is_readable_at_80_columns(path):
    result = runner.invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    flat = " ".join(text.split())
    assert all(len(line) <= 80 for line in text.splitlines()), [line for line in text.splitlines() if len(line) > 80]
    assert "…" not in text and "<bool>" not in text
    for param in _command(path).params:
        if isinstance(param, click.Option) and not param.hidden:
            for name in param.opts + param.secondary_opts:
                assert name in text, f"{name} is cut or missing from `retrv {' '.join(path)} --help`"
            if param.envvar:
                assert f"env var: {param.envvar}" in flat, f"{param.envvar} is not shown for {param.opts[0]}"


def test_settings_backed_options_show_their_variable():
    search = " ".join(runner.invoke(app, ["search", "--help"], terminal_width=80).stdout.split())
    for var in ("RETRV_INDEX", "RETRV_DEVICE", "RETRV_REASONER", "RETRV_RERANK_K", "RETRV_MAX_NEW_TOKENS"):
        assert f"env var: {var}" in search


def test_global_flags_may_follow_the_command(monkeypatch, tmp_path, capsys):
    assert hoist_global_flags(["info", "--json", "--offline"]) == ["--offline", "info", "--json"]
    assert hoist_global_flags(["search", "--", "--offline"]) == ["search", "--", "--offline"]  # a query, not a flag
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sys, "argv", ["retrv", "info", "--index", str(tmp_path / "none"), "--offline"])
    from retrv.cli.app import main

    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1  # the command ran (there is no index there) ...
    assert "no index at" in capsys.readouterr().err
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # ... with --offline applied


def test_a_device_from_the_environment_is_named_as_such(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the request would succeed")
    result = runner.invoke(
        app, ["build-index", str(tmp_path), "--index", str(tmp_path / "i")], env={"RETRV_DEVICE": "cuda"}
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == ("retrv: error: RETRV_DEVICE: cuda was requested but torch sees no CUDA device")
    flag = runner.invoke(app, ["build-index", str(tmp_path), "--index", str(tmp_path / "i"), "--device", "cuda"])
    assert flag.stderr.strip() == "retrv: error: --device: cuda was requested but torch sees no CUDA device"


def test_bad_config_values_are_one_line_errors(tmp_path):
    config = tmp_path / "config.toml"
    for line, expected in [
        ("batch_size = true", "config.toml:1: batch_size = True: expected an integer"),
        ("max_megapixels = inf", "config.toml:1: max_megapixels = inf: expected a finite number"),
        ('encoder = ["clip"]', "config.toml:1: encoder = ['clip']: expected a string"),
        ("rerank_k = 0", "config.toml:1: rerank_k = 0: expected at least 1"),
    ]:
        config.write_text(line + "\n")
        result = runner.invoke(app, ["info", "--index", str(tmp_path)], env={"RETRV_CONFIG": str(config)})
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("retrv: error: ") and expected in result.stderr
        assert result.stderr.count("\n") == 1


def test_only_retrv_errors_are_one_line_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import retrv.index.index

    def broken(*args, **kwargs):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(retrv.index.index.Index, "open", broken)
    result = runner.invoke(app, ["info", "--index", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)  # not swallowed into one line
    assert "retrv: error" not in result.stderr


def test_requires_python_and_the_config_reader_agree():
    import re
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    oldest = re.search(r">=\s*3\.(\d+)", project["requires-python"])
    assert oldest is not None
    if int(oldest.group(1)) < 11:  # tomllib is 3.11+: older Pythons need tomli, and config.py must use it
        assert any(d.startswith("tomli") and "python_version < '3.11'" in d for d in project["dependencies"])
        source = (Path(__file__).parents[2] / "retrv" / "config.py").read_text()
        assert "import tomli as tomllib" in source


def test_bench_plot_needs_matplotlib_before_the_run(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = runner.invoke(
        app,
        [
            "bench",
            "mbeir",
            str(tmp_path / "nowhere"),
            "--plot",
            str(tmp_path / "p.png"),
            "--index-dir",
            str(tmp_path / "ix"),
        ],
    )
    assert result.exit_code == 1 and "--plot needs matplotlib" in result.stderr
    assert not (tmp_path / "ix").exists()  # refused before the dataset was read or an index written


def test_an_interrupt_that_surfaced_as_another_error_still_exits_130(capsys):
    """A Ctrl-C during an import inside a library can come back as that library's error (transformers: "Could not
    import module 'BertModel'"); once a Ctrl-C was seen, the command ends as interrupted, not with that error."""
    import typer

    from retrv.cli import common
    from retrv.errors import ModelLoadError

    @common.handle_errors
    def command() -> None:
        raise ModelLoadError("could not load model: ModuleNotFoundError: Could not import module 'BertModel'")

    with pytest.raises(typer.Exit) as plain:
        command()
    assert plain.value.exit_code == 1
    common._INTERRUPTED.append(True)
    try:
        with pytest.raises(typer.Exit) as interrupted:
            command()
    finally:
        common._INTERRUPTED.clear()
    assert interrupted.value.exit_code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "retrv: interrupted"
