"""GRPO rewards, advantages and loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from retrv.train.rewards import (
    format_reward,
    format_reward_func,
    group_advantages,
    grpo_loss,
    lambda_schedule,
    make_accuracy_reward_func,
    reward,
)

S, E = "<inspection-index-start>", "<inspection-index-end>"
GOOD = (
    f"The ideal result is a red circle. {S}2{E} Candidate 2 has a blue circle. {S}4{E} It matches. <answer>4</answer>"
)


@pytest.mark.parametrize(
    "text, k, expected",
    [
        (GOOD, 5, 1.0),
        ("Candidate 1 matches.<answer>1</answer>", 5, 1.0),
        ("<answer>3</answer>\n<|im_end|>", 5, 1.0),  # end-of-turn marker after the answer is fine
        (GOOD, 3, 0.0),  # answer 4 out of range for K=3
        ("no tags at all", 5, 0.0),
        ("<answer>1</answer><answer>2</answer>", 5, 0.0),  # two answers
        ("<answer>one</answer>", 5, 0.0),  # not an integer
        ("<answer>1</answer> and then more text", 5, 0.0),  # answer not last
        (f"{S}2 <answer>2</answer>", 5, 0.0),  # unclosed inspection
        (f"{S}x{E}<answer>2</answer>", 5, 0.0),  # malformed inspection
        (f"<answer>2</answer>{S}1{E}", 5, 0.0),  # inspection after the answer
        (f"{S}9{E}<answer>2</answer>", 5, 0.0),  # inspected index out of range
        ("<answer>[2]</answer>", 5, 1.0),  # the number as the prompt shows it
    ],
)
def test_format_reward(text, k, expected):
    assert format_reward(text, k) == expected


def test_lambda_schedule_linear_clamped_and_fixed():
    assert lambda_schedule(0, 101) == 0.0
    assert lambda_schedule(25, 101) == 0.25
    assert lambda_schedule(99, 100) == 1.0  # the last of 100 steps (0-based) trains at λ = 1
    assert lambda_schedule(150, 100) == 1.0
    assert lambda_schedule(0, 1) == 1.0
    assert lambda_schedule(80, 100, fixed=0.3) == 0.3  # ablation: λ fixed whatever the step
    assert lambda_schedule(0, 100, fixed=0.0) == 0.0
    with pytest.raises(ValueError):
        lambda_schedule(1, 0)


def test_reward_correctness_and_efficiency_term():
    # GOOD: well-formed (1), correct when the target is candidate 4 (0-based 3), inspected 2 distinct of K=5.
    assert reward(GOOD, target=3, num_candidates=5, lam=0.0) == 2.0
    assert reward(GOOD, target=3, num_candidates=5, lam=0.5) == pytest.approx(1 + (1 - 0.5 * 2 / 5))
    assert reward(GOOD, target=3, num_candidates=5, lam=1.0) == pytest.approx(1 + 0.6)
    # wrong answer: only the format term, whatever λ and inspections
    assert reward(GOOD, target=1, num_candidates=5, lam=1.0) == 1.0
    # repeats count once; an explicit count from the engine wins; counts are capped at K
    rep = f"{S}1{E}{S}1{E}<answer>1</answer>"
    assert reward(rep, 0, 4, lam=1.0) == pytest.approx(1 + (1 - 1 / 4))
    assert reward(rep, 0, 4, lam=1.0, n_inspected=3) == pytest.approx(1 + (1 - 3 / 4))
    assert reward(rep, 0, 4, lam=1.0, n_inspected=9) == pytest.approx(1.0)
    # correct but badly formatted: correctness still counts, the format term does not
    assert reward("<answer>2</answer> trailing", 1, 5, lam=0.0) == 1.0


def test_trl_style_reward_functions():
    completions = [GOOD, [{"role": "assistant", "content": "<answer>1</answer>"}], "garbage"]
    assert format_reward_func(completions, num_candidates=[5, 5, 5]) == [1.0, 1.0, 0.0]
    acc = make_accuracy_reward_func(total_steps=11)
    # step 5 of 11 (0-based) -> λ = 0.5; GOOD inspects 2 of 5
    assert acc(completions, target=[3, 1, 0], num_candidates=5, step=5) == pytest.approx([1 - 0.5 * 2 / 5, 0.0, 0.0])

    class State:
        global_step = 10

    assert acc([GOOD], target=[3], num_candidates=[5], trainer_state=State()) == pytest.approx([1 - 2 / 5])
    fixed = make_accuracy_reward_func(total_steps=10, fixed_lambda=0.0)
    assert fixed([GOOD], target=[3], num_candidates=[5], step=10) == [1.0]


def test_group_advantages_against_hand_computation():
    rewards = [1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5]
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    # group 1: mean 2.5, unbiased std sqrt(((1.5²+0.5²)*2)/3) = sqrt(5/3)
    std = math.sqrt(5 / 3)
    expected = [(1 - 2.5) / std, (2 - 2.5) / std, (3 - 2.5) / std, (4 - 2.5) / std, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    # eps keeps a constant group finite (all zeros) instead of 0/0
    assert group_advantages([1.0, 1.0], 2).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        group_advantages([1.0, 2.0, 3.0], 2)


def _logps(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(b, t, generator=g) * 3


def test_grpo_loss_ratio_one_beta_zero_is_minus_mean_advantage():
    logp = _logps(3, 5)
    adv = torch.tensor([1.5, -0.5, 0.2])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    loss = grpo_loss(logp, logp.clone(), None, adv, mask, clip_eps=0.2, beta=0.0)
    assert loss.item() == pytest.approx(-(1.5 - 0.5 + 0.2) / 3, abs=1e-6)
    # gradient: d loss / d logp_new = -A_i / (|o_i| * B) on masked tokens (ratio 1, not clipped), 0 elsewhere
    new = logp.clone().requires_grad_(True)
    grpo_loss(new, logp, None, adv, mask, beta=0.0).backward()
    expected = -adv[:, None] / mask.sum(1, keepdim=True) / 3 * mask
    assert torch.allclose(new.grad, expected, atol=1e-7)


def test_grpo_loss_kl_term_against_hand_computation():
    new = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    adv = torch.tensor([0.0])  # isolate the KL term
    kl = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]
    loss = grpo_loss(new, new, ref, adv, mask, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * sum(kl) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        grpo_loss(new, new, None, adv, mask, beta=0.1)


def test_grpo_loss_clipping():
    old = torch.zeros(1, 1)
    mask = torch.ones(1, 1)
    eps = 0.2
    # positive advantage, ratio 2: the objective is capped at (1+eps)·A and gives no gradient
    new = torch.full((1, 1), math.log(2.0), requires_grad=True)
    loss, stats = grpo_loss(new, old, None, torch.tensor([1.0]), mask, clip_eps=eps, beta=0.0, return_stats=True)
    assert loss.item() == pytest.approx(-(1 + eps))
    loss.backward()
    assert new.grad.abs().item() == 0.0
    assert stats["clip_fraction"] == 1.0
    # negative advantage, ratio 2: min picks the unclipped, more pessimistic term -> gradient flows
    new = torch.full((1, 1), math.log(2.0), requires_grad=True)
    loss = grpo_loss(new, old, None, torch.tensor([-1.0]), mask, clip_eps=eps, beta=0.0)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert new.grad.item() == pytest.approx(2.0)  # d(ρ·1)/d logp = ρ
    # positive advantage, ratio 0.5 (below 1-eps): unclipped term is the min -> gradient flows
    new = torch.full((1, 1), math.log(0.5), requires_grad=True)
    loss = grpo_loss(new, old, None, torch.tensor([1.0]), mask, clip_eps=eps, beta=0.0)
    assert loss.item() == pytest.approx(-0.5)
