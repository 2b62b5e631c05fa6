"""`retrv train sft` (stage 2): supervised fine-tuning on 4-step chain-of-thought with Detail Inspection.

Each CoT record (the synth world's `cot/train_cot.jsonl`, or `retrv train cot` output) becomes one training
sequence, built by the code inference runs:

    prompt          `sequence.build_prompt` with the candidates' ICM tokens (gradients flow into the ICM)
    reasoning       the CoT text, cut after every `<inspection-index-end>`; each piece is a "generated"
                    `sequence.text_segment`, at the positions decoding would give it
    inspection      after each cut, `sequence.inspection_segment` of the requested candidate, exactly what
                    `generate_with_inspection` injects (past `--max-inspections` it injects the same notice)

Cross-entropy runs on the reasoning and answer tokens only: not on the prompt, not on injected segments.

Trainable: the ICM (`--train-icm`), a LoRA on the LLM's attention and MLP projections (q/k/v/o, gate/up/down
of `language_model` only; the vision tower is untouched, so full tokens stay what `retrv compress` stored),
and the input/output embedding rows of the role tokens (`--train-token-rows`: `<answer>`, the inspection
tags, ... are new tokens whose rows would otherwise stay at their initial values, identical for all of them
on a hub model). Everything else is frozen. Output: a reasoner checkpoint, stage "sft", weights "lora"
(adapter + ICM + role-token rows), loadable with `--reasoner OUT` and as GRPO's init. With `--lora-r 0`
every LLM weight trains instead (no LoRA, no separate rows; the vision tower stays frozen) and the
checkpoint holds full weights: for a tiny LLM trained from scratch, where a low-rank update gains nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import RetrvError, TrainConfigError
from retrv.progress import ProgressCallback, emit
from retrv.train.common import (
    LLM_PROJECTIONS,
    CachedFeaturesConfig,
    load_stage_reasoner,
    save_stage,
    token_budget,
    training_record,
)
from retrv.train.config import help_text, parse_tasks
from retrv.train.loop import DataIssues, ShuffledBatches, TrainSummary, set_seed, train

if TYPE_CHECKING:
    import torch

    from retrv.icm.features import CandidateTokens
    from retrv.rerank.sequence import Segment, SpecialTokens
    from retrv.train.samples import FeatureCache, ReasoningSample

IGNORE = -100


@dataclass
class SftTrainConfig(CachedFeaturesConfig):
    """`retrv train sft`: stage 2, LoRA + ICM on chain-of-thought with inspection segments."""

    cot: str | None = field(
        default=None,
        metadata=help_text(
            "Chain-of-thought jsonl (the synth world's cot/train_cot.jsonl or `retrv train cot` output).", required=True
        ),
    )
    init: str | None = field(
        default=None,
        metadata=help_text(
            "Reasoner checkpoint to start from, with ICM weights (the output of `retrv train icm`).", required=True
        ),
    )
    lora_r: int = field(
        default=16,
        metadata=help_text(
            "LoRA rank; 0 fine-tunes every weight of the LLM instead (vision tower still frozen): for tiny models "
            "trained from scratch, where a low-rank update is the bottleneck."
        ),
    )
    lora_alpha: float = field(default=32.0, metadata=help_text("LoRA scaling numerator (scale = alpha / r)."))
    lora_dropout: float = field(default=0.05, metadata=help_text("Dropout on the LoRA input."))
    lora_targets: str = field(
        default=", ".join(LLM_PROJECTIONS),
        metadata=help_text(
            "Comma-separated projection names the LoRA wraps, in the LLM's layers only (never the vision tower)."
        ),
    )
    train_icm: bool = field(default=True, metadata=help_text("Train the ICM along with the LoRA."))
    train_token_rows: bool = field(
        default=True,
        metadata=help_text("Train the embedding rows of the role tokens (<answer>, inspection tags, <|icm|>, ...)."),
    )
    max_inspections: int = field(
        default=5,
        metadata=help_text(
            "Inspection requests served per sample, as at search time; later ones get the limit notice."
        ),
    )
    batch_size: int = field(default=2, metadata=help_text("CoT samples per micro-batch on each process."))

    def validate(self) -> None:
        super().validate()
        if not self.cot:
            raise TrainConfigError("--cot is required: a chain-of-thought jsonl file")
        if not self.init:
            raise TrainConfigError("--init is required: the stage-1 reasoner checkpoint (retrv train icm)")
        if self.lora_r < 0:
            raise TrainConfigError(f"--lora-r must be >= 0 (0: full fine-tuning), got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TrainConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise TrainConfigError("--lora-targets names no module")
        if self.max_inspections < 0:
            raise TrainConfigError(f"--max-inspections must be >= 0, got {self.max_inspections}")


# ---------------------------------------------------------------- one training sequence


@dataclass
class SftSequence:
    sequence: Segment  # prompt + every segment after it, as `Trace.sequence()` would be
    targets: torch.Tensor  # (L,) long: the token id on rows the model writes (reasoning, answer), IGNORE elsewhere
    segments: list[Segment]  # after the prompt: "generated" pieces and "inspection" / "notice" injections
    inspected: list[int]  # 0-based candidates whose full tokens were injected


def split_reasoning(cot: str, special: SpecialTokens) -> list[str]:
    """The CoT text cut right after each inspection end tag (where decoding pauses for an injection)."""
    pieces, rest = [], cot
    while (cut := rest.find(special.inspect_end)) >= 0:
        cut += len(special.inspect_end)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return [p for p in [*pieces, rest] if p]


def build_sft_sequence(
    tokenizer: Any,
    embed_tokens: Any,
    prompt: Segment,
    cot: str,
    inspect: Callable[[int], CandidateTokens],
    num_candidates: int,
    *,
    special: SpecialTokens | None = None,
    max_inspections: int = 5,
) -> SftSequence:
    """The sequence decoding would build if the model wrote `cot`: same segments, positions, injections."""
    import torch

    from retrv.rerank.decode import INVALID_NOTICE, LIMIT_NOTICE
    from retrv.rerank.grammar import parse_inspection_request
    from retrv.rerank.sequence import SpecialTokens, concat_segments, inspection_segment, text_segment

    special = special or SpecialTokens()
    segments: list[Segment] = []
    inspected: list[int] = []
    written, position = "", prompt.next_position
    for piece in split_reasoning(cot, special):
        ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        generated = text_segment(tokenizer, embed_tokens, list(ids), position)
        segments.append(generated)
        written, position = written + piece, generated.next_position
        if not piece.endswith(special.inspect_end):
            continue
        asked = parse_inspection_request(written, num_candidates, special)
        if asked.index is not None and len(inspected) < max_inspections:
            injected = inspection_segment(tokenizer, embed_tokens, asked.index, inspect(asked.index), position, special)
            inspected.append(asked.index)
        else:
            notice = INVALID_NOTICE if asked.index is None else LIMIT_NOTICE
            injected = text_segment(tokenizer, embed_tokens, notice, position, kind="notice")
        segments.append(injected)
        position = injected.next_position
    sequence = concat_segments([prompt, *segments])
    targets = torch.cat(
        [s.token_ids if s.kind == "generated" else torch.full_like(s.token_ids, IGNORE) for s in [prompt, *segments]]
    )
    return SftSequence(sequence, targets, segments, inspected)


# ---------------------------------------------------------------- role-token rows


class RowEmbedding:
    """The LLM's input embedding with the role-token rows taken from trainable parameters.

    Passed to the sequence builders as `embed_tokens`; after training the rows are written back into the
    embedding matrix, so inference (which uses the plain matrix) reads the same vectors."""

    def __init__(self, embedding: Any, ids: torch.Tensor, rows: torch.Tensor) -> None:
        self.embedding, self.ids, self.rows = embedding, ids, rows

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def __call__(self, token_ids: torch.Tensor) -> torch.Tensor:
        import torch

        out = self.embedding(token_ids)
        for j, token in enumerate(self.ids.tolist()):
            out = torch.where((token_ids == token)[..., None], self.rows[j].to(out.dtype), out)
        return out


def role_token_ids(tokenizer: Any, special_tokens: dict[str, str]) -> list[int]:
    return sorted({int(tokenizer.convert_tokens_to_ids(t)) for t in special_tokens.values()})


def role_rows(model: Any, ids: list[int]) -> Any:
    """Trainable copies of the role tokens' input rows (and output rows when the LM head is not tied)."""
    import torch

    from retrv.icm.features import unwrap_model

    base = unwrap_model(model)
    index = torch.tensor(ids, dtype=torch.long, device=base.get_input_embeddings().weight.device)
    rows = torch.nn.ParameterDict(
        {"input": torch.nn.Parameter(base.get_input_embeddings().weight.detach()[index].float().clone())}
    )
    head = base.get_output_embeddings()
    if head.weight.data_ptr() != base.get_input_embeddings().weight.data_ptr():
        rows["output"] = torch.nn.Parameter(head.weight.detach()[index].float().clone())
    return rows


def write_role_rows(model: Any, ids: list[int], rows: Any) -> None:
    import torch

    from retrv.icm.features import unwrap_model

    base = unwrap_model(model)
    index = torch.tensor(ids, dtype=torch.long, device=base.get_input_embeddings().weight.device)
    with torch.no_grad():
        inp = base.get_input_embeddings().weight
        inp[index] = rows["input"].to(inp.device, inp.dtype)
        if "output" in rows:
            out = base.get_output_embeddings().weight
            out[index] = rows["output"].to(out.device, out.dtype)


def output_logits(model: Any, hidden: torch.Tensor, ids: list[int] | None = None, rows: Any = None) -> torch.Tensor:
    """LM-head logits of (N, H) hidden rows; the role-token columns from `rows` when given."""
    import torch

    from retrv.icm.features import unwrap_model

    logits = unwrap_model(model).lm_head(hidden)
    if rows is None or not ids:
        return logits
    head = rows["output"] if "output" in rows else rows["input"]
    index = torch.tensor(ids, dtype=torch.long, device=hidden.device)
    return logits.index_copy(1, index, hidden @ head.to(hidden.dtype).T)


# ---------------------------------------------------------------- the stage


@dataclass
class SftContext:
    """What the step function needs besides the trainable modules."""

    parts: Any  # LoadedReasoner: tokenizer, image processor, config
    special: SpecialTokens
    budget: Any
    cache: FeatureCache
    role_ids: list[int]
    max_inspections: int = 5


def sft_loss(
    model: Any, icm: Any, rows: Any, samples: list[ReasoningSample], ctx: SftContext
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over the reasoning and answer tokens of a batch of CoT samples."""
    import torch
    import torch.nn.functional as F

    from retrv.icm.features import unwrap_model
    from retrv.rerank.decode import text_stack
    from retrv.train.samples import reasoning_prompt, sample_tokens

    base_embed = unwrap_model(model).get_input_embeddings()
    embed = base_embed if rows is None else RowEmbedding(base_embed, torch.tensor(ctx.role_ids), rows["input"])
    built = []
    for sample in samples:
        tokens = sample_tokens(model, ctx.parts, sample, ctx.budget, ctx.cache)
        prompt = reasoning_prompt(ctx.parts.tokenizer, embed, icm, tokens, ctx.special, ctx.parts.config.prompt_style)
        built.append(
            build_sft_sequence(
                ctx.parts.tokenizer,
                embed,
                prompt,
                sample.cot or "",
                tokens.inspect,
                sample.num_candidates,
                special=ctx.special,
                max_inspections=ctx.max_inspections,
            )
        )
    hidden = text_stack(model, [b.sequence for b in built])
    picked, labels = [], []
    for i, b in enumerate(built):
        targets = b.targets.to(hidden.device)
        rows_i = (targets[1:] != IGNORE).nonzero().squeeze(1)  # row t predicts the token at t + 1
        picked.append(hidden[i, rows_i])
        labels.append(targets[1:][rows_i])
    logits = output_logits(model, torch.cat(picked), ctx.role_ids, rows).float()
    target = torch.cat(labels)
    loss = F.cross_entropy(logits, target)
    accuracy = (logits.argmax(-1) == target).float().mean()
    return loss, {"token_accuracy": float(accuracy), "tokens": float(len(target))}


def attach_lora(model: Any, config: SftTrainConfig) -> Any:
    """A peft LoRA on the LLM's projections named in --lora-targets (the vision tower's are left alone)."""
    import re

    from peft import LoraConfig, get_peft_model

    names = "|".join(re.escape(t.strip()) for t in config.lora_targets.split(",") if t.strip())
    pattern = rf".*language_model\..*\.({names})"
    if not any(re.fullmatch(pattern, n) for n, _ in model.named_modules()):
        raise TrainConfigError(f"--lora-targets {config.lora_targets!r} matches no module of the LLM")
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft's hint says int; a float scales the same
        lora_dropout=config.lora_dropout,
        target_modules=pattern,
        bias="none",
    )
    return get_peft_model(model, lora)


def unfreeze_llm(model: Any) -> Any:
    """Full fine-tuning: every LLM weight (embeddings and LM head included) trains; the vision tower stays frozen."""
    from retrv.icm.features import unwrap_model

    base = unwrap_model(model)
    base.model.language_model.requires_grad_(True)
    base.get_output_embeddings().requires_grad_(True)
    return model


@dataclass
class SftRun:
    """Everything `train_sft` trains: `model` holds the trainable modules (llm with LoRA, icm, rows)."""

    model: Any  # torch.nn.ModuleDict
    loaded: Any  # LoadedReasoner (its model now carries the LoRA layers)
    ctx: SftContext
    samples: list[ReasoningSample]
    issues: DataIssues


def prepare_sft(config: SftTrainConfig, progress: ProgressCallback | None = None) -> SftRun:
    """Read the CoT samples, load --init, attach the LoRA and the trainable rows (seeded: the same every time)."""
    import torch

    from retrv.rerank.sequence import SpecialTokens
    from retrv.train.samples import FeatureCache, load_cot_samples

    config.validate()
    issues = DataIssues(progress)
    samples = load_cot_samples(
        str(config.data),  # validated: given
        str(config.cot),  # validated: given
        config.split,
        pool=config.pool,
        instructions=config.instructions,
        limit=config.limit,
        tasks=parse_tasks(config.tasks),
        issues=issues,
    )
    emit(progress, "data", len(samples), len(samples), f"{len(samples)} CoT samples, {len(issues)} problems skipped")
    loaded = load_stage_reasoner(str(config.init), config)
    if loaded.icm is None:
        raise RetrvError(f"--init {config.init} has no ICM weights: train stage 1 first (retrv train icm)")
    set_seed(config.seed)
    icm = loaded.icm.requires_grad_(config.train_icm)
    ids = role_token_ids(loaded.tokenizer, loaded.config.special_tokens)
    full = config.lora_r == 0
    rows = role_rows(loaded.model, ids) if config.train_token_rows and not full else None
    llm = attach_lora(loaded.model, config) if not full else unfreeze_llm(loaded.model)
    model = torch.nn.ModuleDict({"llm": llm, "icm": icm} | ({"rows": rows} if rows is not None else {}))
    ctx = SftContext(
        loaded,
        SpecialTokens.from_mapping(loaded.config.special_tokens),
        token_budget(config),
        FeatureCache(config.feature_cache),
        ids,
        config.max_inspections,
    )
    return SftRun(model, loaded, ctx, samples, issues)


def train_sft(config: SftTrainConfig, progress: ProgressCallback | None = None) -> TrainSummary:
    """Stage 2: LoRA + ICM (+ role-token rows) on CoT samples; save a stage-"sft" reasoner checkpoint."""
    from accelerate import PartialState

    run = prepare_sft(config, progress)
    ctx = run.ctx

    def step(m: Any, batch: list[ReasoningSample]) -> tuple[Any, dict[str, float]]:
        rows = m["rows"] if "rows" in m else None  # noqa: SIM401 (a ModuleDict has no .get)
        return sft_loss(m["llm"], m["icm"], rows, batch, ctx)

    batches = ShuffledBatches(run.samples, config.batch_size, config.seed)
    summary = train(run.model, step, batches, config, progress=progress, issues=run.issues)
    summary.examples = len(run.samples)
    out = Path(config.out)  # type: ignore[arg-type]
    if PartialState().is_main_process:
        if "rows" in run.model:
            write_role_rows(run.model["llm"], ctx.role_ids, run.model["rows"])
        save_stage(
            run.loaded,
            out,
            stage="sft",
            icm=run.model["icm"],
            training=training_record(config, summary),
            lora_model=run.model["llm"] if config.lora_r else None,
        )
    emit(progress, "save", 1, 1, f"reasoner checkpoint (stage sft) saved to {out}")
    return summary
