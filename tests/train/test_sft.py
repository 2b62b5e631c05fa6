"""Stage 2: the sequence decoding would build, loss on exactly the written tokens, LoRA + ICM + role rows train."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrv.data.synth import SynthConfig, generate
from retrv.rerank.base import Candidate
from retrv.train.samples import load_cot_samples, reasoning_prompt, sample_tokens
from retrv.train.sft import IGNORE, SftTrainConfig, build_sft_sequence, prepare_sft, train_sft

S, E = "<inspection-index-start>", "<inspection-index-end>"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("sft") / "w", SynthConfig(seed=1, size=1))


@pytest.fixture(scope="module")
def icm_checkpoint(tmp_path_factory, tiny_reasoner_dir):
    """A stage-1 checkpoint: the tiny reasoner with a seeded random ICM."""
    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner, save_reasoner

    torch.manual_seed(0)
    icm = ICM(ICMConfig(hidden_size=64, num_heads=4, num_layers=1, num_memory_tokens=2))
    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    return save_reasoner(loaded, tmp_path_factory.mktemp("icm-ckpt") / "icm", stage="icm", icm=icm)


@pytest.fixture(scope="module")
def reasoner(icm_checkpoint):
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    return Reasoner.from_loaded(
        load_reasoner(str(icm_checkpoint), device="cpu", require_icm=True), ReasonerOptions(max_new_tokens=200)
    )


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _built(reasoner, sample, cot, **kw):
    tokens = sample_tokens(reasoner.model, reasoner, sample)
    embed = reasoner.model.get_input_embeddings()
    with torch.no_grad():
        prompt = reasoning_prompt(reasoner.tokenizer, embed, reasoner.icm, tokens)
    return prompt, build_sft_sequence(
        reasoner.tokenizer, embed, prompt, cot, tokens.inspect, sample.num_candidates, **kw
    )


def test_loss_mask_covers_exactly_the_reasoning_and_answer_tokens(reasoner, world):
    tok = reasoner.tokenizer
    sample = load_cot_samples(world, world / "cot/train_cot.jsonl")[0]
    first, second = f"Candidate 2 {S}2{E}", " it matches. <answer>2</answer>"
    prompt, built = _built(reasoner, sample, first + second)
    n1, n2 = len(_ids(tok, first)), len(_ids(tok, second))
    inspection = built.segments[1]
    assert [s.kind for s in built.segments] == ["generated", "inspection", "generated"] and built.inspected == [1]
    assert inspection.candidate == 1 and len(inspection) > 2
    p, m = len(prompt), len(inspection)
    expected = torch.full((p + n1 + m + n2,), IGNORE)
    expected[p : p + n1] = torch.tensor(_ids(tok, first))
    expected[p + n1 + m :] = torch.tensor(_ids(tok, second))
    assert torch.equal(built.targets, expected)
    assert len(built.sequence) == len(expected)
    # past the inspection cap the engine injects the limit notice instead, also outside the loss
    _, capped = _built(reasoner, sample, first + second, max_inspections=0)
    assert [s.kind for s in capped.segments] == ["generated", "notice", "generated"] and capped.inspected == []
    assert (capped.targets != IGNORE).sum() == n1 + n2


def test_training_sequence_is_bit_equal_to_what_inference_decodes(reasoner, world):
    from retrv.rerank.decode import generate_with_inspection

    sample = load_cot_samples(world, world / "cot/train_cot.jsonl")[1]
    cot = f"Step 3: {S}3{E} no. {S}1{E} yes.\nStep 4: <answer>1</answer>"
    prompt, built = _built(reasoner, sample, cot)
    tok = reasoner.tokenizer
    forced = [
        i
        for piece in (f"Step 3: {S}3{E}", f" no. {S}1{E}", " yes.\nStep 4: <answer>1</answer>")
        for i in _ids(tok, piece)
    ]

    def hook(generated, logits):
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(generated)]] = 0.0
        return out

    candidates = [Candidate(item, 0.0) for item in sample.candidates]
    prepared = reasoner.prepare(sample.query, candidates)
    trace = generate_with_inspection(
        reasoner.model, tok, prepared.prompt, prepared.inspect, len(candidates), logits_hook=hook
    )
    assert trace.inspected == built.inspected == [2, 0] and trace.stop_reason == "answer"
    assert [(s.kind, s.candidate) for s in trace.segments] == [(s.kind, s.candidate) for s in built.segments]
    for ours, theirs in zip([prompt, *built.segments], [prepared.prompt, *trace.segments], strict=True):
        assert torch.equal(ours.embeds, theirs.embeds)  # the inspection segments included, bit for bit
        assert torch.equal(ours.position_ids, theirs.position_ids) and torch.equal(ours.token_ids, theirs.token_ids)


def _config(tmp_path, world, init, name="out", **kw):
    args = dict(
        out=str(tmp_path / name),
        data=str(world),
        cot=str(world / "cot/train_cot.jsonl"),
        init=str(init),
        max_steps=24,
        batch_size=1,
        lr=5e-3,
        lr_schedule="constant",
        weight_decay=0.0,
        save_every=0,
        device="cpu",
        lora_r=16,
        limit=3,
    )
    args.update(kw)
    return SftTrainConfig(**args)


def test_sft_lowers_the_loss_trains_lora_icm_rows_only_and_loads(tmp_path, world, icm_checkpoint, tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    config = _config(tmp_path, world, icm_checkpoint)
    initial = {k: v.detach().clone() for k, v in prepare_sft(config).model.named_parameters() if v.requires_grad}
    summary = train_sft(config)
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and "token_accuracy" in rows[0]
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.95 * first  # a tiny random LM starts near uniform (ln 400 = 5.99 nats)
    assert summary.examples == 3

    trained = load_file(str(next((out / "checkpoints").glob("step-*")) / "model.safetensors"))
    assert trained.keys() == initial.keys()  # nothing else was trainable
    kinds = {k.split(".")[0] for k in trained} | {"lora" for k in trained if "lora_" in k}
    assert kinds == {"llm", "icm", "rows", "lora"}
    assert all("lora_" in k for k in trained if k.startswith("llm."))
    assert [k for k in initial if torch.equal(initial[k], trained[k])] == []  # every trainable tensor moved

    loaded = load_reasoner(str(out), device="cpu", require_icm=True)
    assert loaded.config.stage == "sft" and loaded.config.weights == "lora"
    base = load_reasoner(str(tiny_reasoner_dir), device="cpu").model.state_dict()
    after = loaded.model.state_dict()
    vision = [k for k in base if ".visual." in k or k.startswith("model.visual")]
    assert vision and all(torch.equal(base[k], after[k]) for k in vision)  # frozen: the vision tower
    role = sorted({loaded.token_id(r) for r in loaded.config.special_tokens})
    emb_key = next(k for k in base if k.endswith("embed_tokens.weight"))
    other = [i for i in range(base[emb_key].shape[0]) if i not in role]
    assert torch.equal(base[emb_key][other], after[emb_key][other])  # frozen: every other embedding row
    assert torch.allclose(after[emb_key][role], trained["rows.input"])  # the trained role rows were written back
    assert not torch.equal(base[emb_key][role], after[emb_key][role])

    sample = load_cot_samples(world, world / "cot/train_cot.jsonl")[0]
    result = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=12)).rerank(
        sample.query, [Candidate(item, 0.0) for item in sample.candidates]
    )
    assert sorted(result.order) == list(range(sample.num_candidates))


def test_resume_and_bad_cot_lines(tmp_path, world, icm_checkpoint):
    lines = (world / "cot/train_cot.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["answer"] = 9
    cot = tmp_path / "cot.jsonl"
    cot.write_text("\n".join([lines[0], json.dumps(bad), lines[2], lines[3]]) + "\n")
    whole = train_sft(_config(tmp_path, world, icm_checkpoint, "whole", cot=str(cot), max_steps=4, save_every=2))
    assert [str(i) for i in whole.data_issues] == [f"{cot}:2: answer 9 is outside 1..8 (the record lists 8 candidates)"]
    assert whole.examples == 3
    train_sft(_config(tmp_path, world, icm_checkpoint, "split", cot=str(cot), max_steps=2, save_every=2))
    train_sft(_config(tmp_path, world, icm_checkpoint, "split", cot=str(cot), max_steps=4, save_every=2, resume=True))
    for name in ("adapter_model.safetensors", "icm.safetensors", "token_embeddings.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_sample_can_be_trained_twice_with_the_same_result(reasoner, world):
    """The same sample built twice gives the same sequence (no hidden state between builds)."""
    sample = load_cot_samples(world, world / "cot/train_cot.jsonl")[2]
    _, a = _built(reasoner, sample, sample.cot)
    _, b = _built(reasoner, dataclasses.replace(sample), sample.cot)
    assert torch.equal(a.sequence.embeds, b.sequence.embeds) and torch.equal(a.targets, b.targets)
    assert a.inspected == list(sample.inspected)


def test_lora_rank_zero_fine_tunes_every_llm_weight_and_saves_them(tmp_path, world, icm_checkpoint, tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner

    config = _config(tmp_path, world, icm_checkpoint, "full", lora_r=0, lr=1e-3, max_steps=12)
    run = prepare_sft(config)
    trainable = {k for k, v in run.model.named_parameters() if v.requires_grad}
    assert "rows" not in run.model and not any("lora_" in k for k in trainable)  # the embeddings train directly
    assert any(".visual." in k for k, _ in run.model.named_parameters()) and not any(".visual." in k for k in trainable)
    summary = train_sft(config)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in rows[-3:]]) < 0.95 * np.mean([r["loss"] for r in rows[:3]])
    assert summary.steps == 12

    loaded = load_reasoner(str(tmp_path / "full"), device="cpu", require_icm=True)
    assert loaded.config.stage == "sft" and loaded.config.weights == "full"
    base = load_reasoner(str(tiny_reasoner_dir), device="cpu").model.state_dict()
    after = loaded.model.state_dict()
    llm = [k for k in base if "language_model" in k]
    vision = [k for k in base if ".visual." in k or k.startswith("model.visual")]
    assert llm and [k for k in llm if torch.equal(base[k], after[k])] == []  # every LLM tensor moved
    assert vision and all(torch.equal(base[k], after[k]) for k in vision)
