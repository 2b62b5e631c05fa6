"""`retrv train grpo` (stage 3): GRPO over the real inference loop, inspections included.

For each prompt (a query and its coarse top-K candidates) the policy writes G completions with
`generate_with_inspection`, at `--temperature`, on the same prompt segment search builds, so inspected
candidates are injected exactly as at inference. Each completion gets

    r = r_format + 1[answer correct] * (1 - λ * N_inspected / K)      (train/rewards.py)

with N_inspected the candidates the engine actually injected and λ = step / max_steps (or `--fixed-lambda`).
Advantages are normalised within each group of G; the loss is the clipped-ratio objective plus β·KL to the
reference (`rewards.grpo_loss`). Log-probs are recomputed by one teacher-forced forward over `trace.sequence()`
(prompt + generated runs + injected segments, positions as decoded); only generated tokens carry loss.

Choices:
- The LLM trains through LoRA (peft) on its text stack only (the vision tower and embeddings stay frozen).
  The reference policy is the init checkpoint: the same model with the adapter disabled, so no second copy.
- The ICM stays frozen: it was aligned in stage 1 and its soft tokens enter the prompt as constants, so the
  policy's prompt is exactly the prompt search builds (and `retrv compress` output stays meaningful).
- One policy update per rollout batch (TRL's default `num_iterations=1`): logp_old is the detached
  recomputed log-prob, so the ratio is 1 at the update and the clip is the standard safeguard, inert here.
- Sampling seeds come from the micro-batch index, so rollouts after `--resume` are the ones an
  uninterrupted run draws. A `logits_hook` (library only) is applied identically when sampling and in the
  teacher-forced forward, so the trained policy is hook∘model and the update stays on-policy.
- Hard samples only: a query whose positive is the coarse top-1 is skipped (counted in the summary).

The trained reasoner is written to `--out` (stage "grpo"): a LoRA adapter over the init's LLM, or full
weights when the init was itself a merged LoRA checkpoint. `search --reasoner OUT` loads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import DataError, TrainConfigError
from retrv.progress import ProgressCallback, emit
from retrv.train.common import LLM_PROJECTIONS, ReasonerDataConfig, token_budget
from retrv.train.config import help_text, parse_tasks
from retrv.train.loop import DataIssues, ShuffledBatches, TrainSummary, train
from retrv.train.rewards import group_advantages, grpo_loss, lambda_schedule, reward

if TYPE_CHECKING:
    import torch

    from retrv.items import Query
    from retrv.rerank.base import Candidate
    from retrv.rerank.checkpoint import LoadedReasoner
    from retrv.rerank.decode import Trace
    from retrv.rerank.reasoner import Reasoner
    from retrv.train.samples import ReasoningSample

LogitsHook = Callable[[list[int], "torch.Tensor"], "torch.Tensor"]


@dataclass
class GrpoTrainConfig(ReasonerDataConfig):
    """`retrv train grpo`: reinforcement learning of the reasoner over its own inference loop."""

    init: str | None = field(
        default=None,
        metadata=help_text(
            "Reasoner checkpoint to start from (usually the SFT stage's output); also the frozen KL reference.",
            required=True,
        ),
    )
    index: str | None = field(
        default=None,
        metadata=help_text(
            "Index of the candidate pool whose coarse top-K gives each query's candidates. Without it: the "
            "positive, its hard negatives and pool members, in a seeded order."
        ),
    )
    num_candidates: int = field(default=8, metadata=help_text("K: candidates per prompt."))
    group_size: int = field(default=4, metadata=help_text("G: completions sampled per prompt (>= 2)."))
    batch_size: int = field(default=2, metadata=help_text("Prompts per micro-batch (each gives G completions)."))
    temperature: float = field(default=1.0, metadata=help_text("Sampling temperature of the rollouts (> 0)."))
    top_p: float = field(default=1.0, metadata=help_text("Nucleus sampling of the rollouts."))
    max_new_tokens: int = field(default=256, metadata=help_text("Generated tokens per completion."))
    max_inspections: int = field(default=3, metadata=help_text("Inspections served per completion."))
    beta: float = field(
        default=0.04, metadata=help_text("KL weight to the reference (the init checkpoint); 0 turns it off.")
    )
    clip_eps: float = field(default=0.2, metadata=help_text("PPO clip range of the probability ratio."))
    fixed_lambda: float | None = field(
        default=None,
        metadata=help_text(
            "Fixed efficiency weight λ (ablation); default: λ rises linearly from 0 to 1 over training."
        ),
    )
    lora_rank: int = field(default=16, metadata=help_text("LoRA rank on the LLM's linear layers."))
    lora_alpha: float = field(default=32.0, metadata=help_text("LoRA alpha (scale = alpha / rank)."))
    lora_dropout: float = field(default=0.0, metadata=help_text("LoRA dropout (0 keeps the update exactly on-policy)."))
    lora_targets: str = field(
        default=", ".join(LLM_PROJECTIONS),
        metadata=help_text("Comma-separated linear layers of the LLM's text stack that get LoRA adapters."),
    )
    limit: int = field(
        default=0,
        metadata=help_text("Train on at most this many hard prompts (after the easy ones are dropped; 0: all)."),
    )
    lr: float = field(default=1e-5, metadata=help_text("Peak learning rate (AdamW) of the LoRA weights."))

    def validate(self) -> None:
        super().validate()
        if not self.init:
            raise TrainConfigError("--init is required: the reasoner checkpoint to start from (e.g. the SFT output)")
        if self.group_size < 2:
            raise TrainConfigError(
                f"--group-size must be at least 2 (advantages compare a group), got {self.group_size}"
            )
        if self.num_candidates < 2:
            raise TrainConfigError(f"--num-candidates must be at least 2, got {self.num_candidates}")
        if self.temperature <= 0:
            raise TrainConfigError(f"--temperature must be positive (GRPO samples), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TrainConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        for name in ("max_new_tokens", "lora_rank"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_inspections", "beta", "clip_eps", "lora_dropout"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.fixed_lambda is not None and self.fixed_lambda < 0:
            raise TrainConfigError(f"--fixed-lambda must be >= 0, got {self.fixed_lambda}")


@dataclass
class GrpoSample:
    """One prompt: a query and its candidates in coarse order; `target` is the positive's 0-based position."""

    qid: str
    query: Query
    candidates: list[Candidate]
    target: int
    source: str = ""


def hard_samples(samples: Sequence[GrpoSample]) -> tuple[list[GrpoSample], int]:
    """Drop the samples whose positive is already the coarse top-1; return (kept, how many skipped)."""
    kept = [s for s in samples if s.target != 0]
    return kept, len(samples) - len(kept)


def grpo_sample(sample: ReasoningSample) -> GrpoSample:
    """A reasoning sample as a GRPO prompt: `Candidate`s with their coarse scores (None when none chose them)."""
    from retrv.rerank.base import Candidate

    scores = sample.coarse_scores or (None,) * sample.num_candidates
    candidates = [Candidate(item, score) for item, score in zip(sample.candidates, scores, strict=True)]  # type: ignore[arg-type]
    return GrpoSample(sample.qid, sample.query, candidates, sample.answer, sample.source)


def load_grpo_samples(config: GrpoTrainConfig, issues: DataIssues | None = None) -> list[GrpoSample]:
    """Every usable query of `config.split` with K candidates (`samples.load_reasoning_samples`).

    With `config.index`: the index's coarse top-K in coarse order (a query whose positive is not in it is
    reported and skipped). Without: the positive, its hard negatives (`neg_cand_list`) and other pool members
    up to K, in an order seeded by (seed, qid); the synthetic world's hard negatives are the coarse stage's confusions.
    """
    from retrv.train.samples import load_reasoning_samples

    index = None
    if config.index:
        from retrv.index.index import Index

        index = Index.open(config.index, device=config.device)
    samples = load_reasoning_samples(
        str(config.data),  # validated: given
        config.split,
        pool=config.pool,
        num_candidates=config.num_candidates,
        seed=config.seed,
        instructions=config.instructions,
        index=index,
        tasks=parse_tasks(config.tasks),
        issues=issues,
    )
    return [grpo_sample(s) for s in samples]


# ---------------------------------------------------------------- rollouts and rewards


@dataclass
class Rollout:
    trace: Trace
    reward: float
    correct: bool
    format_ok: bool
    n_inspected: int


def rollout_group(
    reasoner: Reasoner,
    sample: GrpoSample,
    group_size: int,
    lam: float,
    *,
    generator: Any = None,
    logits_hook: LogitsHook | None = None,
) -> list[Rollout]:
    """G completions of one prompt through the inference decode loop, each with its reward."""
    from retrv.rerank.decode import generate_with_inspection
    from retrv.rerank.grammar import is_well_formed, parse_answer

    prepared = reasoner.prepare(sample.query, sample.candidates)
    k = prepared.num_candidates
    # never a forced answer: the policy is rewarded for answering within its own budget
    options = replace(reasoner.options.decode_options(), force_answer=False)
    out = []
    for _ in range(group_size):
        trace = generate_with_inspection(
            reasoner.model,
            reasoner.tokenizer,
            prepared.prompt,
            prepared.inspect,
            k,
            options,
            special=reasoner.special,
            generator=generator,
            logits_hook=logits_hook,
        )
        n = len(set(trace.inspected))  # what the engine injected (repeats and refused requests cost nothing)
        r = reward(trace.text, sample.target, k, lam, n_inspected=n, special=reasoner.special)
        correct = parse_answer(trace.text, k, reasoner.special).index == sample.target
        out.append(Rollout(trace, r, correct, is_well_formed(trace.text, k, reasoner.special), n))
    return out


# ---------------------------------------------------------------- teacher-forced log-probs


def generated_rows(trace: Trace) -> list[int]:
    """Row of each generated token in `trace.sequence()` (prompt and injected rows are not generated)."""
    rows: list[int] = []
    offset = len(trace.prompt)
    for segment in trace.segments:
        if segment.kind == "generated":
            rows.extend(range(offset, offset + len(segment)))
        offset += len(segment)
    return rows


def sequence_logprobs(
    model: Any, traces: Sequence[Trace], temperature: float = 1.0, logits_hook: LogitsHook | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (B, T) of each trace's generated tokens under `model`, and their mask (B, T).

    One right-padded forward over the whole sequences; token j is scored by the logits at row j - 1, through
    `logits_hook` and the temperature exactly as `generate_with_inspection` sampled it.
    """
    import torch

    from retrv.icm.features import unwrap_model
    from retrv.rerank.decode import text_stack

    base = unwrap_model(model)
    hidden = text_stack(model, [t.sequence() for t in traces])
    rows = [generated_rows(t) for t in traces]
    longest = max(len(r) for r in rows)
    index = torch.zeros(len(traces), longest, dtype=torch.long, device=hidden.device)
    mask = torch.zeros(len(traces), longest, dtype=torch.bool, device=hidden.device)
    for b, r in enumerate(rows):
        if len(r) != len(traces[b].generated_ids):
            raise ValueError("trace segments do not hold its generated tokens")
        index[b, : len(r)] = torch.tensor(r, device=hidden.device) - 1
        mask[b, : len(r)] = True
    picked = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # only rows that predict
    logits = base.lm_head(picked).float()
    if logits_hook is not None:
        logits = torch.stack(
            [
                torch.stack(
                    [
                        logits_hook(t.generated_ids[:i], logits[b, i]) if i < len(t.generated_ids) else logits[b, i]
                        for i in range(longest)
                    ]
                )
                for b, t in enumerate(traces)
            ]
        )
    logp = torch.log_softmax(logits / temperature, dim=-1)
    tokens = torch.zeros(len(traces), longest, dtype=torch.long, device=hidden.device)
    for b, t in enumerate(traces):
        tokens[b, : len(t.generated_ids)] = torch.tensor(t.generated_ids, device=hidden.device)
    chosen = torch.gather(logp, 2, tokens[..., None])[..., 0]
    return chosen.masked_fill(~mask, 0.0), mask


# ---------------------------------------------------------------- the step


class GrpoStep:
    """The loop's step function: rollouts of a micro-batch of prompts, rewards, then the GRPO loss.

    Batches are `(micro_index, samples)`; the index seeds the sampler and gives the step for λ.
    """

    def __init__(
        self, reasoner: Reasoner, config: GrpoTrainConfig, logits_hook: LogitsHook | None = None, world_size: int = 1
    ) -> None:
        self.reasoner, self.config, self.logits_hook = reasoner, config, logits_hook
        self.micro_per_step = config.grad_accum * world_size
        self.last_rollouts: list[Rollout] = []  # of the latest micro-batch (for inspection and tests)

    def __call__(self, model: Any, batch: tuple[int, list[GrpoSample]]) -> tuple[torch.Tensor, dict[str, float]]:
        import torch

        micro, samples = batch
        cfg = self.config
        step = micro // self.micro_per_step
        lam = lambda_schedule(step, cfg.max_steps, cfg.fixed_lambda)
        device = _device(model)
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + micro)
        model.eval()  # sampling and the loss forward see the same (dropout-free) policy
        rollouts: list[Rollout] = []
        for sample in samples:
            rollouts += rollout_group(
                self.reasoner, sample, cfg.group_size, lam, generator=generator, logits_hook=self.logits_hook
            )
        model.train()
        self.last_rollouts = rollouts
        traces = [r.trace for r in rollouts]
        logp, mask = sequence_logprobs(model, traces, cfg.temperature, self.logits_hook)
        logp_ref = None
        if cfg.beta != 0.0:
            with torch.no_grad(), model.disable_adapter():
                logp_ref, _ = sequence_logprobs(model, traces, cfg.temperature, self.logits_hook)
        rewards = torch.tensor([r.reward for r in rollouts])
        advantages = group_advantages(rewards, cfg.group_size).to(logp.device)
        loss, stats = grpo_loss(
            logp, logp.detach(), logp_ref, advantages, mask, cfg.clip_eps, cfg.beta, return_stats=True
        )
        n = len(rollouts)
        metrics = {
            "reward": float(rewards.mean()),
            "accuracy": sum(r.correct for r in rollouts) / n,
            "format": sum(r.format_ok for r in rollouts) / n,
            "inspections": sum(r.n_inspected for r in rollouts) / n,
            "generated_tokens": sum(len(t.generated_ids) for t in traces) / n,
            "lambda": lam,
            "kl": stats["kl"],
            "clip_fraction": stats["clip_fraction"],
        }
        return loss, metrics


def _device(model: Any) -> Any:
    return next(model.parameters()).device


class IndexedBatches:
    """A batch stream whose batches carry their global micro-batch index: `(index, batch)`."""

    def __init__(self, stream: Callable[[int], Any]) -> None:
        self.stream = stream

    def __call__(self, start: int = 0) -> Any:
        yield from enumerate(self.stream(start), start)


# ---------------------------------------------------------------- model set-up and saving


def add_lora(model: Any, config: GrpoTrainConfig) -> Any:
    """Wrap `model` in a peft LoRA on the text stack's linear layers; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
    if not targets:
        raise TrainConfigError("--lora-targets names no layer")
    pattern = r".*language_model.*\.(" + "|".join(targets) + r")$"  # never the vision tower's MLP of the same names
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft's hint says int; a float scales the same
        lora_dropout=config.lora_dropout,
        target_modules=pattern,
        bias="none",
    )
    model.requires_grad_(False)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainConfigError(f"--lora-targets: {exc}") from None


def save_grpo_reasoner(loaded: Any, peft_model: Any, out: str | Path, training: dict[str, Any]) -> Path:
    """Write the stage-"grpo" checkpoint: LoRA over the init's LLM, or full weights over a merged-LoRA init."""
    from retrv.rerank.checkpoint import save_reasoner

    if loaded.config.weights == "lora":  # the init's own LoRA exists only merged in memory
        merged = peft_model.merge_and_unload()
        return save_reasoner(replace(loaded, model=merged), out, stage="grpo", training=training, weights="full")
    return save_reasoner(loaded, out, stage="grpo", training=training, lora_model=peft_model)


def train_grpo(
    config: GrpoTrainConfig,
    *,
    samples: Sequence[GrpoSample] | None = None,
    logits_hook: LogitsHook | None = None,
    progress: ProgressCallback | None = None,
    loaded: LoadedReasoner | None = None,
) -> TrainSummary:
    """Train `config.init` with GRPO on `config.data` (or on `samples`, already in coarse order); save to `config.out`.

    `loaded` is the init reasoner when the caller already holds it (LoRA layers are injected into its model).
    `summary.examples` is the number of hard prompts trained on; the skipped easy ones are in `retrv-train.json`.
    """
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions
    from retrv.rerank.sequence import SpecialTokens
    from retrv.train.loop import set_seed

    config.validate()
    issues = DataIssues(progress)
    loaded = loaded or load_reasoner(
        config.init, device=config.device, require_icm=True, max_image_tokens=config.max_image_tokens
    )
    if samples is None:
        samples = load_grpo_samples(config, issues)
    kept, easy = hard_samples(samples)
    if config.limit:
        kept = kept[: config.limit]
    emit(
        progress,
        "data",
        len(kept),
        len(samples),
        f"{len(kept)} hard prompts; skipped {easy} whose positive is the coarse top-1, {len(issues)} problems",
    )
    if not kept:
        raise DataError(
            f"{config.data}: no hard training prompts (every positive is the coarse top-1, or no usable query)"
        )

    assert loaded.icm is not None  # load_reasoner(require_icm=True)
    loaded.icm.requires_grad_(False)
    set_seed(config.seed)  # LoRA's A matrices are drawn here
    peft_model = add_lora(loaded.model, config)
    options = ReasonerOptions(
        max_new_tokens=config.max_new_tokens,
        max_inspections=config.max_inspections,
        temperature=config.temperature,
        top_p=config.top_p,
        budget=token_budget(config),
    )
    special = SpecialTokens.from_mapping(loaded.config.special_tokens)
    reasoner = Reasoner(
        peft_model, loaded.tokenizer, loaded.image_processor, loaded.icm, options, special, loaded.config.prompt_style
    )
    from accelerate import PartialState

    state = PartialState()
    step = GrpoStep(reasoner, config, logits_hook, state.num_processes)
    batches = IndexedBatches(ShuffledBatches(kept, config.batch_size, config.seed))
    summary = train(peft_model, step, batches, config, progress=progress, issues=issues)
    summary.examples = len(kept)
    out = Path(config.out)  # type: ignore[arg-type]
    if state.is_main_process:
        record = {
            "stage": "grpo",
            "config": asdict(config),
            "steps": summary.steps,
            "final_loss": summary.final_loss,
            "prompts": len(kept),
            "skipped_easy": easy,
            "skipped": [str(i) for i in summary.data_issues],
        }
        save_grpo_reasoner(loaded, peft_model, out, {k: v for k, v in record.items() if k != "skipped"})
        (out / "retrv-train.json").write_text(json.dumps(record, indent=2))
    emit(progress, "save", 1, 1, f"reasoner saved to {out} (use it with --reasoner {out})")
    return summary
