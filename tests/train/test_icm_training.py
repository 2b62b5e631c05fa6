"""Stage 1 on a tiny reasoner and a tiny synthetic world: the KL falls, only the ICM moves, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrv.data.synth import SynthConfig, generate
from retrv.errors import DataError
from retrv.rerank.base import Candidate
from retrv.train.icm import AlignmentPair, IcmTrainConfig, alignment_loss, prepare_icm, train_icm
from retrv.train.samples import load_reasoning_samples


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("icm") / "w", SynthConfig(seed=0, size=2))


def _config(tmp_path, world, reasoner, name="out", **kw):
    args = dict(
        out=str(tmp_path / name),
        data=str(world),
        reasoner=str(reasoner),
        max_steps=30,
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
    args.update(kw)
    return IcmTrainConfig(**args)


def test_alignment_lowers_the_kl_moves_only_the_icm_and_loads_for_reason_mode(tmp_path, world, tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    config = _config(tmp_path, world, tiny_reasoner_dir)
    initial = {k: v.clone() for k, v in prepare_icm(config).model["icm"].state_dict().items()}
    summary = train_icm(config)
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31)) and "top1_agreement" in rows[0]
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.5 * first
    assert summary.examples == 48 and summary.data_issues == []  # 24 train queries x 2 candidates

    trained = load_file(str(out / "icm.safetensors"))
    assert trained.keys() == initial.keys()
    assert [k for k in initial if torch.equal(initial[k], trained[k])] == []  # every ICM tensor moved
    saved = json.loads((out / "retrv-reasoner.json").read_text())
    assert saved["stage"] == "icm" and saved["weights"] == "base" and saved["training"]["steps"] == 30

    base = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    loaded = load_reasoner(str(out), device="cpu", require_icm=True)
    frozen = base.model.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in loaded.model.state_dict().items())  # LLM + vision untouched
    sample = load_reasoning_samples(world, num_candidates=3)[0]
    result = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=6)).rerank(
        sample.query, [Candidate(item, 0.0) for item in sample.candidates]
    )
    assert sorted(result.order) == [0, 1, 2] and result.generated_tokens == 6


def test_resume_reproduces_an_uninterrupted_run(tmp_path, world, tiny_reasoner_dir):
    train_icm(_config(tmp_path, world, tiny_reasoner_dir, "whole", max_steps=6, save_every=3))
    train_icm(_config(tmp_path, world, tiny_reasoner_dir, "split", max_steps=3, save_every=3))
    resumed = train_icm(_config(tmp_path, world, tiny_reasoner_dir, "split", max_steps=6, save_every=3, resume=True))
    assert resumed.start_step == 3 and resumed.steps == 6
    whole, split = (
        load_file(str(tmp_path / "whole/icm.safetensors")),
        load_file(str(tmp_path / "split/icm.safetensors")),
    )
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    losses = lambda name: [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses("whole") == losses("split")


def test_the_kl_reaches_every_icm_parameter_and_no_llm_parameter(world, tiny_reasoner_dir, tmp_path):
    run = prepare_icm(_config(tmp_path, world, tiny_reasoner_dir))
    pairs = [AlignmentPair(run.pairs[0].sample, 0), AlignmentPair(run.pairs[1].sample, 1)]
    loss, metrics = alignment_loss(run.model["llm"], run.model["icm"], run.loaded, pairs)
    assert loss.item() > 0 and 0.0 <= metrics["top1_agreement"] <= 1.0
    loss.backward()
    grads = [p.grad for p in run.model["icm"].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in run.model["llm"].parameters())


def test_an_empty_split_is_an_error(tmp_path, world, tiny_reasoner_dir):
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    for f in (copy / "query/train").glob("*.jsonl"):
        f.write_text("")
    with pytest.raises(DataError, match="no usable queries"):
        train_icm(_config(tmp_path, copy, tiny_reasoner_dir))


def test_the_prompt_style_is_recorded_and_search_builds_it(tmp_path, world, tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner

    train_icm(_config(tmp_path, world, tiny_reasoner_dir, max_steps=1, prompt_style="bare", tasks="0"))
    loaded = load_reasoner(str(tmp_path / "out"), device="cpu", require_icm=True)
    assert (
        loaded.config.prompt_style == "bare" and json.loads((tmp_path / "out/metrics.jsonl").read_text())["step"] == 1
    )
    sample = load_reasoning_samples(world, num_candidates=2)[0]
    prompt = (
        Reasoner.from_loaded(loaded).prepare(sample.query, [Candidate(item, 0.0) for item in sample.candidates]).prompt
    )
    assert loaded.tokenizer.decode(prompt.token_ids.tolist()).startswith(
        "<|im_start|>user\nCandidates:\n1<|icm|><|icm|>2"
    )
    with pytest.raises(Exception, match="prompt-style"):
        _config(tmp_path, world, tiny_reasoner_dir, prompt_style="terse").validate()
    with pytest.raises(Exception, match="--tasks"):
        _config(tmp_path, world, tiny_reasoner_dir, tasks="zero").validate()
