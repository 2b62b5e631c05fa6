"""What the reasoner's training stages (icm, sft, grpo) share: the dataset fields of their configs, loading the
reasoner to train, saving a stage's checkpoint, and the record written beside it."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import TrainConfigError
from retrv.train.config import TASKS_HELP, TrainConfig, help_text, parse_tasks

# The LLM's linear layers a LoRA wraps by default (Qwen2/2.5/3-VL names; the vision tower's are left alone).
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

if TYPE_CHECKING:
    from retrv.icm.features import TokenBudget
    from retrv.rerank.checkpoint import LoadedReasoner
    from retrv.train.loop import TrainSummary


@dataclass
class ReasonerDataConfig(TrainConfig):
    """Fields every reasoner stage shares: the dataset and how candidates become tokens."""

    data: str | None = field(
        default=None,
        metadata=help_text(
            "M-BEIR-layout dataset root (query/<split>/*.jsonl, cand_pool/...), e.g. one written by `retrv data synth`.",
            required=True,
        ),
    )
    split: str = field(default="train", metadata=help_text("Which query split to train on."))
    pool: str = field(
        default="local", metadata=help_text("Candidate pool that resolves candidate ids: local or global.")
    )
    instructions: bool = field(
        default=True,
        metadata=help_text(
            "Give each query its dataset's instruction (instructions/query_instructions.tsv), as `retrv bench` does."
        ),
    )
    max_image_tokens: int = field(
        default=256, metadata=help_text("Image token budget per image (merged 28x28 px patches).")
    )
    max_text_tokens: int = field(default=256, metadata=help_text("Text tokens kept per query or candidate."))
    limit: int = field(default=0, metadata=help_text("Use at most this many training queries (0: all)."))
    tasks: str = field(default="", metadata=help_text(TASKS_HELP))
    batch_size: int = field(default=8, metadata=help_text("Examples per micro-batch on each process."))
    lr: float = field(default=1e-4, metadata=help_text("Peak learning rate (AdamW)."))

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise TrainConfigError("--data is required: an M-BEIR-layout dataset directory")
        if self.pool not in ("local", "global"):
            raise TrainConfigError(f"--pool must be local or global, got {self.pool!r}")
        parse_tasks(self.tasks)
        for name in ("max_image_tokens", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.limit < 0:
            raise TrainConfigError(f"--limit must be >= 0, got {self.limit}")


@dataclass
class CachedFeaturesConfig(ReasonerDataConfig):
    """A stage whose reasoner stays frozen where it reads candidates, so their full tokens can be kept."""

    feature_cache: int = field(
        default=1024,
        metadata=help_text(
            "Samples whose full tokens (query + K candidates) stay in memory; the vision tower is frozen (0: recompute)."
        ),
    )


def token_budget(config: ReasonerDataConfig) -> TokenBudget:
    from retrv.icm.features import TokenBudget

    return TokenBudget(max_text_tokens=config.max_text_tokens)


def load_stage_reasoner(spec: str, config: ReasonerDataConfig) -> LoadedReasoner:
    """The reasoner in float32 on the CPU (bf16 autocast on CUDA comes from the loop), frozen."""
    import torch

    from retrv.rerank.checkpoint import load_reasoner

    loaded = load_reasoner(spec, device="cpu", max_image_tokens=config.max_image_tokens, role_tokens=True)
    loaded.model.float().requires_grad_(False)
    if loaded.icm is not None:
        loaded.icm.float()
    return dataclasses.replace(loaded, dtype=torch.float32)


def save_stage(
    loaded: LoadedReasoner, out: Path, *, stage: str, icm: Any, training: dict[str, Any], lora_model: Any = None
) -> Path:
    """save_reasoner for a trained stage. A LoRA on top of a merged-LoRA checkpoint cannot point at a base
    that holds its LLM, so it is merged and saved with full weights; so is an ICM-only stage on top of one."""
    from retrv.rerank.checkpoint import save_reasoner

    if loaded.config.weights == "lora":
        model = lora_model.merge_and_unload() if lora_model is not None else loaded.model
        return save_reasoner(
            dataclasses.replace(loaded, model=model), out, stage=stage, icm=icm, training=training, weights="full"
        )
    return save_reasoner(loaded, out, stage=stage, icm=icm, training=training, lora_model=lora_model)


def training_record(config: Any, summary: TrainSummary) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "steps": summary.steps,
        "final_loss": summary.final_loss,
        "examples": summary.examples,
        "skipped": [str(i) for i in summary.data_issues],
    }
