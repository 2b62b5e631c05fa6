"""GRPO (stage 3) rewards, group-normalised advantages and the clipped policy loss, as plain functions.

The reward of one completion (Retrv-R1):

    r = r_format + 1[answer correct] * (1 - λ * N_inspected / K)

`r_format` is 1 when the completion is well-formed in the reasoner's output grammar (`rerank/grammar.py`, the
parser search uses), 0 otherwise; the answer is the one search would rank first. The efficiency term charges
for each candidate opened with the Detail Inspection Mechanism; λ rises linearly from 0 to 1 over training
(curriculum: first learn to be right, then learn to be right cheaply), or stays fixed for ablations.
Targets are 0-based candidate positions, as the grammar's parsers return them.

`format_reward_func` / `make_accuracy_reward_func` follow TRL's reward-function convention
(`f(completions, **dataset_columns) -> list[float]`), so they plug into `trl.GRPOTrainer(reward_funcs=[...])`
as well as into retrv's own GRPO stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from retrv.rerank.grammar import inspection_requests, is_well_formed, parse_answer
from retrv.rerank.sequence import SpecialTokens

if TYPE_CHECKING:
    import torch


def format_reward(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> float:
    """1.0 if `text` is a well-formed completion for K candidates, else 0.0."""
    return 1.0 if is_well_formed(text, num_candidates, special) else 0.0


def lambda_schedule(step: int, total: int, fixed: float | None = None) -> float:
    """λ for the efficiency term at 0-based `step` of `total`: `fixed` when given (ablation), else rising
    linearly from 0 at the first step to 1 at the last (step / (total - 1), clamped; 1 for a single step)."""
    if fixed is not None:
        return float(fixed)
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}")
    if total == 1:
        return 1.0
    return min(max(step / (total - 1), 0.0), 1.0)


def reward(
    text: str,
    target: int,
    num_candidates: int,
    lam: float,
    n_inspected: int | None = None,
    special: SpecialTokens = SpecialTokens(),
) -> float:
    """r = r_format + 1[answer == target] * (1 - lam * N_inspected / K); `target` is 0-based.

    `n_inspected` defaults to the number of distinct candidates the text asked to inspect (an engine that knows
    better, e.g. one that refused a repeat, passes its own count); it is capped at K.
    """
    if num_candidates <= 0:
        raise ValueError(f"num_candidates must be positive, got {num_candidates}")
    r_format = format_reward(text, num_candidates, special)
    if parse_answer(text, num_candidates, special).index != target:
        return r_format
    if n_inspected is None:
        n_inspected = len({r.index for r in inspection_requests(text, num_candidates, special) if r.index is not None})
    n = min(max(n_inspected, 0), num_candidates)
    return r_format + (1.0 - lam * n / num_candidates)


# ---- TRL-style reward functions: f(completions, **columns) -> list[float] ----


def _completion_text(completion: Any) -> str:
    """TRL passes plain strings, or for conversational data a list of {"role", "content"} messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def _column(values: Any, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, (int, float)):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward column {name!r} has {len(values)} values for {n} completions")
    return values


def format_reward_func(completions: Sequence[Any], num_candidates: Sequence[int] | int, **_: Any) -> list[float]:
    """TRL-style: the format term for each completion."""
    ks = _column(num_candidates, len(completions), "num_candidates")
    return [format_reward(_completion_text(c), k) for c, k in zip(completions, ks)]


def make_accuracy_reward_func(total_steps: int, fixed_lambda: float | None = None) -> Callable[..., list[float]]:
    """TRL-style: the correctness-times-efficiency term, with λ from the current step.

    The returned function reads the step from a `step=` keyword or from TRL's `trainer_state.global_step`;
    it needs the dataset columns `target` and `num_candidates` (and optionally `n_inspected`).
    """

    def accuracy_reward_func(
        completions: Sequence[Any],
        target: Sequence[int] | int,
        num_candidates: Sequence[int] | int,
        n_inspected: Sequence[int] | None = None,
        step: int | None = None,
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float]:
        if step is None:
            step = int(getattr(trainer_state, "global_step", 0) or 0)
        lam = lambda_schedule(step, total_steps, fixed_lambda)
        n = len(completions)
        out = []
        for c, t, k, ni in zip(
            completions,
            _column(target, n, "target"),
            _column(num_candidates, n, "num_candidates"),
            _column(n_inspected, n, "n_inspected"),
        ):
            text = _completion_text(c)
            out.append(reward(text, t, k, lam, ni) - format_reward(text, k))
        return out

    return accuracy_reward_func


# ---- advantages and loss ----


def group_advantages(rewards: Sequence[float] | torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps) for rewards laid out group after group.

    `rewards` has length n_groups * group_size; completions of one prompt are consecutive (TRL's layout).
    The std is the unbiased sample std (Bessel), as in TRL's GRPOTrainer; a group whose rewards are all
    equal gets advantage 0 for every member (it carries no learning signal).
    """
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32)
    if group_size < 2 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards cannot be split into groups of {group_size} (need group_size >= 2)")
    grouped = r.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    centred = grouped - mean
    adv = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    return adv.view(-1)


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective (DeepSeekMath), to be minimised.

    Shapes: log-probs of the sampled tokens (B, T); advantages (B,); mask (B, T), 1 on completion tokens.
    Per token: -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A) + β·KL, with ρ = exp(logp_new - logp_old) and the unbiased,
    always-positive KL estimator exp(ref - new) - (ref - new) - 1. Tokens are averaged within each sequence,
    then sequences are averaged (the paper's 1/G Σ 1/|o_i| Σ_t). β = 0 drops the reference model entirely
    (`logp_ref` may then be None).
    """
    import torch

    mask = mask.to(logp_new.dtype)
    adv = advantages.to(logp_new.dtype).unsqueeze(-1)
    ratio = torch.exp(logp_new - logp_old)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        if logp_ref is None:
            raise ValueError("grpo_loss: beta != 0 needs logp_ref (the reference model's log-probs)")
        delta = logp_ref - logp_new
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
    tokens = mask.sum(dim=-1).clamp(min=1.0)
    loss = ((per_token * mask).sum(dim=-1) / tokens).mean()
    if not return_stats:
        return loss
    with torch.no_grad():
        was_clipped = ((ratio - clipped).abs() > 0).to(mask.dtype) * (adv != 0).to(mask.dtype)
        n = mask.sum().clamp(min=1.0)
        stats = {
            "clip_fraction": float((was_clipped * mask).sum() / n),
            "kl": float((kl * mask).sum() / n) if kl is not None else 0.0,
            "ratio_mean": float((ratio * mask).sum() / n),
        }
    return loss, stats
