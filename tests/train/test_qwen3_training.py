"""The training stages on Qwen3-VL and Qwen3.5 reasoners: the same sequences as inference (DeepStack features
included, linear-attention layers on right-padded batches)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrv.data.synth import SynthConfig, generate
from retrv.rerank.base import Candidate
from retrv.train.icm import IcmTrainConfig, prepare_icm, train_icm
from retrv.train.samples import load_reasoning_samples
from retrv.train.sft import SftTrainConfig, prepare_sft, train_sft


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])


@pytest.mark.parametrize("architecture", ["qwen3_vl", "qwen3_5"])
def test_icm_then_sft_train_a_qwen3_reasoner_and_reason_mode_loads_it(tmp_path, hub_qwen3_vl_dir, architecture):
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions
    from retrv.train.random_models import build_random_vlm

    base = hub_qwen3_vl_dir
    if architecture != "qwen3_vl":
        base = build_random_vlm(tmp_path / "base", hub_layout=True, vision_depth=2, architecture=architecture)
    world = generate(tmp_path / "world", SynthConfig(seed=0, size=1))
    icm_config = IcmTrainConfig(
        out=str(tmp_path / "icm"),
        data=str(world),
        reasoner=str(base),
        max_steps=12,
        batch_size=8,
        lr=3e-3,
        lr_schedule="constant",
        weight_decay=0.0,
        save_every=0,
        device="cpu",
        num_candidates=2,
        icm_heads=4,
        icm_memory_tokens=3,
    )
    initial = {k: v.clone() for k, v in prepare_icm(icm_config).model["icm"].state_dict().items()}
    train_icm(icm_config)
    first, last = _losses(tmp_path / "icm")
    assert last < first
    trained = load_file(str(tmp_path / "icm" / "icm.safetensors"))
    assert [k for k in initial if torch.equal(initial[k], trained[k])] == []

    sft_config = SftTrainConfig(
        out=str(tmp_path / "sft"),
        data=str(world),
        cot=str(world / "cot/train_cot.jsonl"),
        init=str(tmp_path / "icm"),
        max_steps=16,
        batch_size=1,
        lr=5e-3,
        lr_schedule="constant",
        weight_decay=0.0,
        save_every=0,
        device="cpu",
        lora_r=16,
        limit=3,
    )
    initial = {k: v.detach().clone() for k, v in prepare_sft(sft_config).model.named_parameters() if v.requires_grad}
    train_sft(sft_config)
    first, last = _losses(tmp_path / "sft")
    assert last < 0.95 * first
    trained = load_file(str(next((tmp_path / "sft" / "checkpoints").glob("step-*")) / "model.safetensors"))
    assert trained.keys() == initial.keys() and [k for k in initial if torch.equal(initial[k], trained[k])] == []

    reasoner = Reasoner.load(str(tmp_path / "sft"), device="cpu", options=ReasonerOptions(max_new_tokens=6))
    sample = load_reasoning_samples(world, num_candidates=3)[0]
    result = reasoner.rerank(sample.query, [Candidate(item, 0.0) for item in sample.candidates])
    assert reasoner.candidate_tokens == "icm" and sorted(result.order) == [0, 1, 2] and result.generated_tokens == 6
