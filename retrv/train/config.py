"""Typed configs for `retrv train ...`, one dataclass per command (TRL style).

Every field carries `metadata={"help": ...}`: the CLI turns each field into a `--flag` (underscores become
dashes) with that help text, so the dataclass is the single source of truth for names, defaults and docs.
Fields with `metadata["required"]` have no usable default and must be given on the command line.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from retrv.errors import TrainConfigError

LR_SCHEDULES = ("constant", "linear", "cosine")
ENCODER_LOSSES = ("infonce", "sigmoid")


def help_text(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


TASKS_HELP = "Train on these M-BEIR task ids only, comma-separated (e.g. 0,3); empty: every task of the split."


def parse_tasks(text: str) -> frozenset[int] | None:
    """`--tasks "0,3"` -> {0, 3}; empty -> None (every task). TrainConfigError on anything else."""
    if not text.strip():
        return None
    try:
        return frozenset(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise TrainConfigError(f"--tasks must be comma-separated task ids such as 0,3, got {text!r}") from None


@dataclass
class TrainConfig:
    """What every training stage shares: the loop, checkpoints, logging and devices."""

    out: str | None = field(
        default=None,
        metadata=help_text("Output directory: checkpoints/, metrics.jsonl and the trained model.", required=True),
    )
    max_steps: int = field(default=200, metadata=help_text("Optimizer steps to run."))
    batch_size: int = field(default=32, metadata=help_text("Examples per micro-batch on each process."))
    grad_accum: int = field(
        default=1,
        metadata=help_text(
            "Micro-batches accumulated per optimizer step (effective batch = batch-size x grad-accum x processes)."
        ),
    )
    lr: float = field(default=1e-5, metadata=help_text("Peak learning rate (AdamW)."))
    weight_decay: float = field(
        default=0.01,
        metadata=help_text(
            "AdamW weight decay, applied to matrices only (not to biases, norms, embeddings of rank 1, temperature)."
        ),
    )
    warmup_steps: int = field(default=0, metadata=help_text("Linear warm-up steps before the schedule."))
    lr_schedule: str = field(
        default="cosine", metadata=help_text(f"Learning-rate schedule after warm-up: {', '.join(LR_SCHEDULES)}.")
    )
    max_grad_norm: float = field(
        default=1.0, metadata=help_text("Clip the gradient norm to this value (0: no clipping).")
    )
    save_every: int = field(
        default=100, metadata=help_text("Write a checkpoint every N optimizer steps (0: only at the end).")
    )
    keep_checkpoints: int = field(default=2, metadata=help_text("How many recent checkpoints to keep (0: keep all)."))
    resume: bool = field(
        default=False,
        metadata=help_text(
            "Continue from the last checkpoint in --out (weights, optimizer, scheduler, RNG and data position)."
        ),
    )
    seed: int = field(default=0, metadata=help_text("Random seed: data order, initialisation, dropout."))
    device: str = field(
        default="auto",
        metadata=help_text(
            "auto, cpu, cuda or mps. Under `accelerate launch`/`torchrun` each process takes its own GPU."
        ),
    )
    bf16: bool = field(default=True, metadata=help_text("bf16 autocast on CUDA (ignored on CPU and MPS)."))

    def validate(self) -> None:
        if not self.out:
            raise TrainConfigError("--out is required: the directory for checkpoints and the trained model")
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_checkpoints", "warmup_steps"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise TrainConfigError(f"--lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")


@dataclass
class EncoderTrainConfig(TrainConfig):
    """`retrv train encoder`: contrastive fine-tuning of a CLIP/SigLIP dual encoder on M-BEIR-layout data."""

    data: str | None = field(
        default=None,
        metadata=help_text(
            "M-BEIR-layout dataset root (query/<split>/*.jsonl, cand_pool/...), e.g. one written by `retrv data synth`.",
            required=True,
        ),
    )
    base: str | None = field(
        default=None,
        metadata=help_text(
            "Encoder to start from: a Hugging Face id or a local directory (CLIP or SigLIP), optionally clip:SPEC.",
            required=True,
        ),
    )
    split: str = field(default="train", metadata=help_text("Which query split to train on."))
    pool: str = field(default="local", metadata=help_text("Candidate pool that resolves positive and negative ids."))
    hard_negatives: int = field(
        default=1, metadata=help_text("Hard negatives per query drawn from neg_cand_list (0: in-batch negatives only).")
    )
    loss: str = field(
        default="infonce",
        metadata=help_text(
            "infonce: symmetric softmax over the batch (CLIP). sigmoid: pairwise sigmoid (SigLIP paper)."
        ),
    )
    learn_temperature: bool = field(
        default=True, metadata=help_text("Train the temperature (logit scale) with the model.")
    )
    freeze_vision: bool = field(default=False, metadata=help_text("Keep the vision tower and its projection fixed."))
    freeze_text: bool = field(default=False, metadata=help_text("Keep the text tower and its projection fixed."))
    lr: float = field(default=1e-5, metadata=help_text("Peak learning rate (AdamW); 1e-5 suits pretrained CLIP."))

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise TrainConfigError("--data is required: an M-BEIR-layout dataset directory")
        if not self.base:
            raise TrainConfigError("--base is required: the encoder to fine-tune (HF id or directory)")
        if self.hard_negatives < 0:
            raise TrainConfigError(f"--hard-negatives must be >= 0, got {self.hard_negatives}")
        if self.loss not in ENCODER_LOSSES:
            raise TrainConfigError(f"--loss must be one of {', '.join(ENCODER_LOSSES)}, got {self.loss!r}")
        if self.freeze_vision and self.freeze_text:
            raise TrainConfigError(
                "--freeze-vision and --freeze-text together leave nothing to train but the temperature"
            )


@dataclass(frozen=True)
class FieldHelp:
    name: str  # the dataclass field
    flag: str  # the CLI flag, e.g. "--max-steps"
    type: str  # the annotation as written, e.g. "int", "str | None"
    default: Any
    help: str
    required: bool


def _flag(name: str) -> str:
    return name.replace("_", "-")


def describe(config_cls: type) -> list[FieldHelp]:
    """Every field of a config dataclass with its flag and help, in declaration order (for the CLI)."""
    out = []
    for f in fields(config_cls):
        default = f.default if f.default is not MISSING else None
        out.append(
            FieldHelp(
                f.name,
                f"--{_flag(f.name)}",
                str(f.type),
                default,
                f.metadata.get("help", ""),
                bool(f.metadata.get("required", False)),
            )
        )
    return out
