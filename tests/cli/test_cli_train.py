"""`retrv train`: flags come from the config dataclasses; a tiny stage runs end to end through the CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from retrv.cli.train import app
from retrv.train.config import describe
from retrv.train.grpo import GrpoTrainConfig
from retrv.train.icm import IcmTrainConfig
from retrv.train.sft import SftTrainConfig

WIDE = {"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from retrv.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("cli-train") / "w", SynthConfig(seed=2, size=1))


def _help_text(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


@pytest.mark.parametrize(
    ("command", "config_cls"), [("icm", IcmTrainConfig), ("sft", SftTrainConfig), ("grpo", GrpoTrainConfig)]
)
def test_help_lists_every_config_field_with_its_help(command, config_cls):
    text = _help_text(command)
    for f in describe(config_cls):
        assert f.flag in text, f.flag
        assert " ".join(f.help.split()) in text, f.help
    assert "--no-bf16" in text and "--resume" in text


def test_a_tiny_sft_run_through_the_cli(tmp_path, world, tiny_reasoner_dir):
    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner, save_reasoner

    torch.manual_seed(0)
    init = save_reasoner(
        load_reasoner(str(tiny_reasoner_dir), device="cpu"),
        tmp_path / "icm",
        stage="icm",
        icm=ICM(ICMConfig(hidden_size=64, num_heads=4, num_layers=1, num_memory_tokens=2)),
    )
    out = tmp_path / "sft"
    args = [
        "sft",
        "--data",
        str(world),
        "--cot",
        str(world / "cot/train_cot.jsonl"),
        "--init",
        str(init),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "1",
        "--limit",
        "2",
        "--lora-r",
        "2",
        "--device",
        "cpu",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["schema"] == "retrv.train.sft/1" and summary["steps"] == 2 and summary["examples"] == 2
    assert summary["skipped"] == [] and summary["out_dir"] == str(out)
    saved = json.loads((out / "retrv-reasoner.json").read_text())
    assert saved["stage"] == "sft" and saved["weights"] == "lora" and saved["training"]["config"]["lora_r"] == 2
    assert load_reasoner(str(out), device="cpu", require_icm=True).icm is not None

    again = CliRunner().invoke(app, args)  # the same --out without --resume: refused, one line
    assert again.exit_code == 1 and "pass --resume" in again.stderr and "Traceback" not in again.output


def test_bad_values_fail_with_one_line(tmp_path, world):
    result = CliRunner().invoke(
        app, ["icm", "--data", str(world), "--reasoner", "x", "--out", str(tmp_path / "o"), "--lr", "-1"]
    )
    assert result.exit_code == 1 and result.stderr.strip() == "retrv: error: --lr must be positive, got -1.0"
    missing = CliRunner().invoke(app, ["sft", "--data", str(world), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "--cot" in missing.output  # required flags are enforced by the parser
