"""GRPO (stage 3) on a tiny random Qwen2.5-VL reasoner: learning, what moves, resume, rewards through the loop.

The toy task: K=2 text candidates, the positive always second (a hard sample: the coarse top-1 is wrong).
A random tiny model almost never writes the answer grammar, so every test samples through `GRAMMAR_HOOK`:
the vocabulary is restricted to the six tokens of `<answer>i</answer>` / inspections and the tokens the
grammar allows next get +5 (a nudge, not a mask: malformed completions still happen, ~1 in 3 at the start).
`train_grpo` applies the hook identically when sampling and in the loss forward, so training stays on-policy.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from retrv.items import Item, Query
from retrv.rerank.base import Candidate
from retrv.train.grpo import (
    GrpoSample,
    GrpoStep,
    GrpoTrainConfig,
    add_lora,
    hard_samples,
    load_grpo_samples,
    rollout_group,
    sequence_logprobs,
    train_grpo,
)
from retrv.train.loop import set_seed

S, E, A, Z = "<inspection-index-start>", "<inspection-index-end>", "<answer>", "</answer>"


@pytest.fixture(scope="module")
def init_dir(tiny_reasoner_dir, tmp_path_factory):
    """A stage-"icm" checkpoint: the tiny base LLM plus a seeded random ICM."""
    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner, save_reasoner

    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    torch.manual_seed(0)
    icm = ICM(ICMConfig(hidden_size=64, num_heads=4, num_layers=1, num_memory_tokens=2))
    return save_reasoner(loaded, tmp_path_factory.mktemp("grpo-init"), stage="icm", icm=icm)


def _load(init_dir):
    from retrv.rerank.checkpoint import load_reasoner

    return load_reasoner(str(init_dir), device="cpu", require_icm=True)


class GrammarHook:
    def __init__(self, tokenizer, bias: float = 5.0):
        ids = tokenizer.convert_tokens_to_ids
        self.s, self.e, self.a, self.z = ids(S), ids(E), ids(A), ids(Z)
        self.one, self.two = (tokenizer(d, add_special_tokens=False)["input_ids"][0] for d in "12")
        self.allowed = torch.tensor([self.s, self.e, self.a, self.z, self.one, self.two])
        self.bias = bias

    def _next(self, generated):
        if not generated or generated[-1] == self.e:
            return [self.a, self.s]
        if generated[-1] in (self.a, self.s):
            return [self.one, self.two]
        if generated[-1] in (self.one, self.two):
            return [self.z] if len(generated) >= 2 and generated[-2] == self.a else [self.e]
        return [self.a]

    def __call__(self, generated, logits):
        out = torch.full_like(logits, float("-inf"))
        out[self.allowed] = logits[self.allowed]
        grammar = torch.tensor(self._next(generated))
        out[grammar] = out[grammar] + self.bias
        return out


class Forced:
    """Forces `text`'s tokens (a policy-free scripted completion)."""

    def __init__(self, tokenizer, text):
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, generated, logits):
        out = torch.full_like(logits, float("-inf"))
        out[self.ids[min(len(generated), len(self.ids) - 1)]] = 0.0
        return out


PAIRS = [
    ("a red circle", "a blue square"),
    ("a green triangle", "a yellow circle"),
    ("a small cat", "a cup of coffee"),
    ("a rocket", "a temple"),
]


def _samples():
    return [
        GrpoSample(
            f"q{i}",
            Query(text=pos),
            [
                Candidate(Item(f"n{i}", "n", "text", text=neg), 0.9),
                Candidate(Item(f"p{i}", "p", "text", text=pos), 0.5),
            ],
            1,
        )
        for i, (pos, neg) in enumerate(PAIRS)
    ]


def _config(tmp_path, name, init_dir, **kw):
    base = dict(
        out=str(tmp_path / name),
        init=str(init_dir),
        data="(samples given)",
        max_steps=4,
        batch_size=2,
        group_size=4,
        lr=5e-2,
        weight_decay=0.0,
        lr_schedule="constant",
        save_every=0,
        device="cpu",
        num_candidates=2,
        max_new_tokens=6,
        max_inspections=1,
        lora_rank=8,
        lora_alpha=16.0,
        beta=0.0,
        fixed_lambda=0.0,
        keep_checkpoints=0,
    )
    base.update(kw)
    return GrpoTrainConfig(**base)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_improves_lora_moves_and_nothing_else_does(init_dir, tmp_path):
    cfg = _config(tmp_path, "run", init_dir, max_steps=24, group_size=6, beta=0.02)
    loaded = _load(init_dir)
    frozen = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    icm_before = {n: p.detach().clone() for n, p in loaded.icm.named_parameters()}
    # the LoRA init train_grpo draws (seeded), reproduced on a second copy
    set_seed(cfg.seed)
    lora_init = {
        n: p.detach().clone()
        for n, p in add_lora(_load(init_dir).model, cfg).get_base_model().named_parameters()
        if "lora_" in n
    }

    summary = train_grpo(cfg, samples=_samples(), logits_hook=GrammarHook(loaded.tokenizer), loaded=loaded)

    rows = _rows(summary.out_dir)
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert set(rows[0]) >= {"reward", "accuracy", "format", "inspections", "generated_tokens", "kl", "lambda", "loss"}
    first = sum(r["reward"] for r in rows[:4]) / 4
    last = sum(r["reward"] for r in rows[-8:]) / 8
    assert last > first + 0.3, (first, last)
    assert rows[-1]["kl"] > 0  # the reference (adapter disabled) differs from the trained policy
    after = dict(loaded.model.named_parameters())
    assert lora_init and set(lora_init) == {n for n in after if "lora_" in n}
    assert all(after[n].requires_grad for n in lora_init)
    unchanged = [n for n, p in lora_init.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, unchanged[:3]
    for n, p in frozen.items():  # peft renames wrapped layers' weights to ...base_layer.weight
        key = n if n in after else n.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert not after[key].requires_grad and torch.equal(after[key].detach(), p), n
    assert all(torch.equal(p, icm_before[n]) for n, p in loaded.icm.named_parameters())

    # the saved reasoner (stage grpo, LoRA over the init's base) computes what the trained policy computes
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    back = load_reasoner(str(summary.out_dir), device="cpu", require_icm=True)
    assert back.config.stage == "grpo" and back.config.weights == "lora"
    record = json.loads((summary.out_dir / "retrv-train.json").read_text())
    assert record["prompts"] == 4 and record["skipped_easy"] == 0
    ids = torch.tensor([[5, 17, 33, 60, 101]])
    with torch.no_grad():
        torch.testing.assert_close(
            back.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits, rtol=0, atol=1e-5
        )
    result = Reasoner.from_loaded(back, ReasonerOptions(max_new_tokens=6)).rerank(
        Query(text="a rocket"), _samples()[3].candidates
    )
    assert sorted(result.order) == [0, 1]


def test_resume_reproduces_an_uninterrupted_run(init_dir, tmp_path):
    hook = GrammarHook(_load(init_dir).tokenizer)
    full = _config(tmp_path, "full", init_dir, max_steps=4, save_every=2, group_size=2, beta=0.02, fixed_lambda=None)
    train_grpo(full, samples=_samples(), logits_hook=hook)

    class Interrupt(Exception):
        pass

    def stop_after_first_checkpoint(event):
        if event.stage == "checkpoint" and event.done == 2:
            raise Interrupt

    part = dataclasses.replace(full, out=str(tmp_path / "part"))
    with pytest.raises(Interrupt):
        train_grpo(part, samples=_samples(), logits_hook=hook, progress=stop_after_first_checkpoint)
    summary = train_grpo(dataclasses.replace(part, resume=True), samples=_samples(), logits_hook=hook)
    assert summary.start_step == 2 and summary.steps == 4
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "part")] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "full")
    ]
    a, b = (
        load_file(str(tmp_path / "full" / "adapter_model.safetensors")),
        load_file(str(tmp_path / "part" / "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lambda"] for r in _rows(tmp_path / "full")] == pytest.approx(
        [0.0, 1 / 3, 2 / 3, 1.0]
    )  # 0 → 1, last step at 1


def test_inspections_cost_reward_when_lambda_is_positive(init_dir):
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    loaded = _load(init_dir)
    reasoner = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=12, max_inspections=2, temperature=1.0))
    sample = _samples()[0]
    scripts = {
        "direct": f"{A}2{Z}",
        "one": f"{S}2{E}{A}2{Z}",
        "two": f"{S}1{E}{S}2{E}{A}2{Z}",
        "wrong": f"{S}1{E}{A}1{Z}",
    }
    got = {}
    for name, text in scripts.items():
        (rollout,) = rollout_group(reasoner, sample, 1, lam=0.5, logits_hook=Forced(loaded.tokenizer, text))
        assert rollout.trace.text == text
        got[name] = rollout
    assert got["one"].trace.inspected == [1] and got["two"].trace.inspected == [0, 1]
    assert [s.kind for s in got["two"].trace.segments] == [
        "generated",
        "inspection",
        "generated",
        "inspection",
        "generated",
    ]
    assert {k: r.reward for k, r in got.items()} == {
        "direct": 2.0,
        "one": 2.0 - 0.5 * 1 / 2,
        "two": 2.0 - 0.5 * 2 / 2,
        "wrong": 1.0,
    }
    (zero,) = rollout_group(reasoner, sample, 1, lam=0.0, logits_hook=Forced(loaded.tokenizer, scripts["two"]))
    assert zero.reward == 2.0  # λ = 0: inspecting is free


def test_group_advantages_flow_into_the_loss(init_dir, tmp_path):
    """A hand check on one group: ∇loss = -1/G Σ_i A_i / |o_i| Σ_t ∇log π(o_it), A_i = (r_i - mean) / (std + 1e-4)."""
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    loaded = _load(init_dir)
    cfg = _config(tmp_path, "unused", init_dir, group_size=4)
    set_seed(0)
    model = add_lora(loaded.model, cfg)
    for n, p in model.named_parameters():  # non-zero B so every LoRA matrix has a gradient
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    hook = GrammarHook(loaded.tokenizer)
    reasoner = Reasoner(
        model,
        loaded.tokenizer,
        loaded.image_processor,
        loaded.icm,
        ReasonerOptions(max_new_tokens=6, max_inspections=1, temperature=1.0),
    )
    step = GrpoStep(reasoner, cfg, hook)
    loss, metrics = step(model, (3, [_samples()[0]]))
    rollouts = step.last_rollouts
    rewards = [r.reward for r in rollouts]
    assert len(set(rewards)) > 1, rewards  # the seed gives a group with signal
    mean = sum(rewards) / 4
    std = (sum((r - mean) ** 2 for r in rewards) / 3) ** 0.5
    adv = [(r - mean) / (std + 1e-4) for r in rewards]
    assert metrics["reward"] == pytest.approx(mean)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params)
    logp, mask = sequence_logprobs(model, [r.trace for r in rollouts], cfg.temperature, hook)
    hand = -sum(adv[i] * logp[i].sum() / mask[i].sum() for i in range(4)) / 4
    want = torch.autograd.grad(hand, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    # the teacher-forced log-probs are the ones the decode loop sampled with
    for i, r in enumerate(rollouts):
        n = len(r.trace.generated_ids)
        torch.testing.assert_close(logp[i, :n].detach(), torch.tensor(r.trace.logprobs), rtol=0, atol=1e-5)


def test_hard_sample_filter_skips_queries_whose_positive_is_coarse_top1(colour_world_dir, init_dir, tmp_path):
    cfg = _config(
        tmp_path,
        "colours",
        init_dir,
        data=str(colour_world_dir),
        num_candidates=3,
        max_steps=1,
        batch_size=2,
        group_size=2,
        max_new_tokens=3,
    )
    samples = load_grpo_samples(cfg)
    assert len(samples) == 16  # 8 caption->image + 8 image->caption queries
    for s in samples:
        assert len(s.candidates) == 3 and s.candidates[s.target].item.id == f"91:{int(s.qid.split(':')[1]) - 200}"
    kept, skipped = hard_samples(samples)
    easy = [s.qid for s in samples if s.target == 0]
    assert skipped == len(easy) > 0 and len(kept) == 16 - len(easy)
    assert all(s.target > 0 and s.qid not in easy for s in kept)
    assert load_grpo_samples(cfg)[5].candidates == samples[5].candidates  # seeded order
    summary = train_grpo(cfg, logits_hook=GrammarHook(_load(init_dir).tokenizer, bias=0.0))
    record = json.loads((summary.out_dir / "retrv-train.json").read_text())
    assert record["skipped_easy"] == len(easy) and record["prompts"] == len(kept) == summary.examples


def test_with_an_index_prompts_are_its_coarse_top_k_and_the_easy_ones_are_skipped(
    colour_world_dir, colour_caption_index_dir, init_dir, tmp_path
):
    from retrv.index.index import Index
    from retrv.train.loop import DataIssues

    cfg = _config(
        tmp_path, "indexed", init_dir, data=str(colour_world_dir), index=str(colour_caption_index_dir), num_candidates=8
    )
    issues = DataIssues()
    samples = load_grpo_samples(cfg, issues)
    assert len(samples) == len(issues) == 8  # the text -> image queries find no image among the captions
    index = Index.open(colour_caption_index_dir, device="cpu")
    for s in samples:
        items, scores = index.coarse(s.query, 8)
        assert [(c.item.id, c.coarse_score) for c in s.candidates] == [(i.id, x) for i, x in zip(items, scores)]
        assert s.candidates[s.target].item.id == f"91:{int(s.qid.split(':')[1]) - 200}"
    kept, skipped = hard_samples(samples)
    assert skipped == sum(s.target == 0 for s in samples) > 0 and kept and all(s.target > 0 for s in kept)


def test_init_from_a_merged_lora_checkpoint_saves_full_weights(init_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from retrv.rerank.checkpoint import load_reasoner, save_reasoner

    sft = _load(init_dir)
    torch.manual_seed(1)
    lora = get_peft_model(sft.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    sft_dir = save_reasoner(sft, tmp_path / "sft", stage="sft", lora_model=lora)
    loaded = load_reasoner(str(sft_dir), device="cpu", require_icm=True)
    assert loaded.config.weights == "lora"
    cfg = _config(tmp_path, "grpo", sft_dir, max_steps=2, batch_size=1, group_size=2)
    summary = train_grpo(cfg, samples=_samples(), logits_hook=GrammarHook(loaded.tokenizer), loaded=loaded)
    back = load_reasoner(str(summary.out_dir), device="cpu", require_icm=True)
    assert (back.config.stage, back.config.weights) == ("grpo", "full")
    ids = torch.tensor([[5, 17, 33, 60, 101]])
    with torch.no_grad():
        torch.testing.assert_close(
            back.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits, rtol=0, atol=1e-5
        )
