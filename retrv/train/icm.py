"""`retrv train icm` (stage 1, self-alignment): the frozen reasoner teaches the ICM to compress.

The LLM and the vision tower stay frozen; only the ICM trains. For each (query, candidate) pair of the
training split (the candidate's positive, hard negatives and random pool members, `--num-candidates`
in all) two sequences go through the frozen LLM:

    teacher  <|im_start|>user\\nQuery: {query}\\nCandidate: {candidate's FULL tokens}\\n{DESCRIBE}<|im_end|>\\n
             <|im_start|>assistant\\nThe candidate{ reads: <its text>}
    student  the same, with the candidate's two ICM tokens [content, relation(query)] in place of its full tokens

Target (the cheap, deterministic choice): the teacher's next-token distributions at every row from the
candidate's last row to the end (the description prompt and the teacher-forced description: a fixed lead,
plus the candidate's own text when it has one). Loss = KL(teacher || student) averaged over those rows. The
relation token is computed with the real query, which both sequences show in full, so it learns what the
model reads about the candidate *given* the query; the content token learns what it reads about the
candidate alone. Full tokens, soft-token placement and positions come from the code inference uses
(`icm.features`, `rerank.sequence.SegmentBuilder`).

Output (`--out`): a reasoner checkpoint, stage "icm" (ICM weights + the base's token rows; the LLM comes
from the base spec), next to `checkpoints/` and `metrics.jsonl`. It loads with `--rerank reason --reasoner
OUT` and is `retrv train sft --init`. A reasoner without an ICM gets a new one from `--icm-*`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import TrainConfigError
from retrv.progress import ProgressCallback, emit
from retrv.train.common import (
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
    from retrv.rerank.checkpoint import LoadedReasoner
    from retrv.train.samples import FeatureCache, ReasoningSample

DESCRIBE = "Describe the candidate and how it relates to the query."
DESCRIPTION_LEAD = "The candidate"


@dataclass
class IcmTrainConfig(CachedFeaturesConfig):
    """`retrv train icm`: stage 1, the ICM learns to make two tokens the frozen LLM reads like the full candidate."""

    reasoner: str | None = field(
        default=None,
        metadata=help_text(
            "Reasoner to align: a Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3.5 model (HF id or directory) or a retrv "
            "reasoner checkpoint.",
            required=True,
        ),
    )
    num_candidates: int = field(
        default=4,
        metadata=help_text(
            "Candidates paired with each query: its positive, its hard negatives, then random pool members."
        ),
    )
    icm_heads: int = field(
        default=8, metadata=help_text("New ICM only: attention heads (must divide the LLM hidden size).")
    )
    icm_layers: int = field(default=2, metadata=help_text("New ICM only: cross-attention blocks per stack."))
    icm_memory_tokens: int = field(default=4, metadata=help_text("New ICM only: memory tokens per candidate."))
    prompt_style: str = field(
        default="",
        metadata=help_text(
            "Reason-mode prompt the checkpoint (and every later stage and search) uses: chat (system prompt and "
            "instruction, for instruct VLMs) or bare (query and candidates only, for a reasoner trained from "
            "scratch); empty keeps the reasoner's own (chat for a base model)."
        ),
    )

    def validate(self) -> None:
        super().validate()
        if not self.reasoner:
            raise TrainConfigError("--reasoner is required: the model whose ICM to train")
        if self.num_candidates < 2:
            raise TrainConfigError(f"--num-candidates must be at least 2, got {self.num_candidates}")
        from retrv.rerank.sequence import PROMPT_STYLES

        if self.prompt_style and self.prompt_style not in PROMPT_STYLES:
            raise TrainConfigError(
                f"--prompt-style must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt_style!r}"
            )


@dataclass(frozen=True)
class AlignmentPair:
    sample: ReasoningSample
    candidate: int  # 0-based index into sample.candidates


def _alignment_segments(
    tokenizer: Any,
    embed: Any,
    query: CandidateTokens,
    candidate: CandidateTokens,
    soft: torch.Tensor | None,
    special: Any,
) -> tuple[Any, int]:
    """(the whole sequence, the row where the target rows start) for the full (soft None) or compressed view."""
    from retrv.rerank.sequence import SegmentBuilder, concat_segments, text_segment

    s = special
    b = SegmentBuilder(tokenizer, embed, 0, special)
    b.text(f"{s.im_start}user\nQuery: ").candidate(query).text("\nCandidate: ")
    b.candidate(candidate) if soft is None else b.soft(soft)
    head = b.build("prompt")
    lead = tokenizer(
        f"\n{DESCRIBE}{s.im_end}\n{s.im_start}assistant\n{DESCRIPTION_LEAD}"
        + (" reads:" if candidate.text_ids else ""),
        add_special_tokens=False,
    )["input_ids"]
    tail = text_segment(tokenizer, embed, list(lead) + list(candidate.text_ids), head.next_position)
    return concat_segments([head, tail]), len(head) - 1


def alignment_loss(
    model: Any,
    icm: Any,
    parts: Any,
    pairs: list[AlignmentPair],
    *,
    budget: Any = None,
    cache: FeatureCache | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(teacher || student) over the description rows of a batch of pairs (see the module docstring)."""
    import torch

    from retrv.icm.features import unwrap_model
    from retrv.icm.module import pad_tokens
    from retrv.rerank.decode import text_stack
    from retrv.rerank.sequence import SpecialTokens
    from retrv.train.samples import sample_tokens

    special = SpecialTokens.from_mapping(parts.config.special_tokens)
    base = unwrap_model(model)
    embed = base.get_input_embeddings()
    tokens = [sample_tokens(model, parts, p.sample, budget, cache) for p in pairs]
    queries = [t.query for t in tokens]
    cands = [t.candidates[p.candidate] for t, p in zip(tokens, pairs, strict=True)]
    weight = next(icm.parameters())
    full, full_mask = pad_tokens([c.embeds.to(weight.device, weight.dtype) for c in cands])
    query, query_mask = pad_tokens([q.embeds.to(weight.device, weight.dtype) for q in queries])
    soft = torch.stack(
        [icm.content(full, full_mask), icm.relation(icm.memory(full, full_mask), query, query_mask)], dim=1
    )

    def rows_of(views: list[tuple[Any, int]]) -> torch.Tensor:
        hidden = text_stack(model, [seq for seq, _ in views])
        picked = torch.cat([hidden[i, start : len(seq)] for i, (seq, start) in enumerate(views)])
        return torch.log_softmax(base.lm_head(picked).float(), dim=-1)

    with torch.no_grad():
        teacher = rows_of(
            [
                _alignment_segments(parts.tokenizer, embed, q, c, None, special)
                for q, c in zip(queries, cands, strict=True)
            ]
        )
    student = rows_of(
        [
            _alignment_segments(parts.tokenizer, embed, q, c, soft[i], special)
            for i, (q, c) in enumerate(zip(queries, cands, strict=True))
        ]
    )
    loss = (teacher.exp() * (teacher - student)).sum(-1).mean()
    agree = (teacher.argmax(-1) == student.argmax(-1)).float().mean()
    return loss, {"top1_agreement": float(agree)}


def new_icm(hidden: int, config: IcmTrainConfig) -> Any:
    from retrv.icm.module import ICM, ICMConfig

    try:
        icm_config = ICMConfig(
            hidden_size=hidden,
            num_heads=config.icm_heads,
            num_layers=config.icm_layers,
            num_memory_tokens=config.icm_memory_tokens,
        )
    except ValueError as e:
        raise TrainConfigError(f"--icm-heads/--icm-layers/--icm-memory-tokens: {e}") from None
    return ICM(icm_config)


@dataclass
class IcmRun:
    model: Any  # torch.nn.ModuleDict {"llm": frozen reasoner, "icm": the ICM being trained}
    loaded: LoadedReasoner
    pairs: list[AlignmentPair]
    issues: DataIssues


def prepare_icm(config: IcmTrainConfig, progress: ProgressCallback | None = None) -> IcmRun:
    """Read the pairs, load the reasoner (frozen) and its ICM, or a new one (seeded: the same every time)."""
    import torch

    from retrv.train.samples import load_reasoning_samples

    config.validate()
    issues = DataIssues(progress)
    samples = load_reasoning_samples(
        str(config.data),  # validated: given
        config.split,
        pool=config.pool,
        num_candidates=config.num_candidates,
        seed=config.seed,
        instructions=config.instructions,
        limit=config.limit,
        tasks=parse_tasks(config.tasks),
        issues=issues,
    )
    pairs = [AlignmentPair(s, j) for s in samples for j in range(s.num_candidates)]
    emit(
        progress,
        "data",
        len(pairs),
        len(pairs),
        f"{len(samples)} queries, {len(pairs)} pairs, {len(issues)} problems skipped",
    )
    loaded = load_stage_reasoner(str(config.reasoner), config)
    if config.prompt_style:
        loaded = dataclasses.replace(
            loaded, config=dataclasses.replace(loaded.config, prompt_style=config.prompt_style)
        )
    set_seed(config.seed)
    icm = (
        loaded.icm if loaded.icm is not None else new_icm(loaded.model.get_input_embeddings().weight.shape[-1], config)
    )
    icm.float().requires_grad_(True)
    return IcmRun(torch.nn.ModuleDict({"llm": loaded.model, "icm": icm}), loaded, pairs, issues)


def train_icm(config: IcmTrainConfig, progress: ProgressCallback | None = None) -> TrainSummary:
    """Stage 1: train (or continue) the ICM of `config.reasoner` on `config.data`; save a stage-"icm" checkpoint."""
    from accelerate import PartialState

    from retrv.train.samples import FeatureCache

    run = prepare_icm(config, progress)
    cache, budget = FeatureCache(config.feature_cache), token_budget(config)

    def step(m: Any, batch: list[AlignmentPair]) -> tuple[Any, dict[str, float]]:
        return alignment_loss(m["llm"], m["icm"], run.loaded, batch, budget=budget, cache=cache)

    batches = ShuffledBatches(run.pairs, config.batch_size, config.seed)
    summary = train(run.model, step, batches, config, progress=progress, issues=run.issues)
    summary.examples = len(run.pairs)
    out = Path(config.out)  # type: ignore[arg-type]
    if PartialState().is_main_process:
        save_stage(run.loaded, out, stage="icm", icm=run.model["icm"], training=training_record(config, summary))
    emit(progress, "save", 1, 1, f"reasoner checkpoint (stage icm) saved to {out}")
    return summary
