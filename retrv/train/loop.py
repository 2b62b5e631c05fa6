"""The training loop every stage shares: step function + model + optimizer + batch stream.

    summary = train(model, step_fn, batches, config, progress=cb)

- `step_fn(model, batch) -> (loss, metrics)`: one micro-batch forward; `metrics` is a dict of floats
  (e.g. {"reward": 0.7}) that lands in metrics.jsonl and the progress line. It may call any model methods
  any number of times (gradients are averaged across processes by one all-reduce after accumulation, not
  by DDP hooks, so there is no forward()-only restriction).
- `batches(start) -> Iterator[batch]`: the global stream of micro-batches beginning at micro-batch `start`
  (deterministic in `start`, which is how `--resume` finds its place). `ShuffledBatches` makes one from a
  list of examples. With N processes, process r takes micro-batches r, r+N, r+2N, ...

Each optimizer step runs `grad_accum` micro-batches, clips, steps AdamW and the LR schedule, appends one
JSONL line {step, loss, lr, seconds, **metrics} to `<out>/metrics.jsonl` and emits a progress event.
Every `save_every` steps (and at the end) it writes `<out>/checkpoints/step-NNNNNNN/`:
  model.safetensors   trainable parameters and buffers (frozen weights come back from the base model)
  training_state.pt   optimizer + scheduler state dicts (torch.save; read back with weights_only=True)
  rng-<rank>.pt       python/numpy/torch/cuda RNG states of each process
  trainer_state.json  step, micro-batches consumed, last loss, the config
A checkpoint is written to a temporary name and renamed, so a crash never leaves a half checkpoint.

Multi-GPU needs no code change: `accelerate launch -m retrv.cli.app train encoder ...` or
`torchrun --nproc-per-node 4 -m retrv.cli.app train encoder ...`; `accelerate.Accelerator` reads the
launcher's environment. On CUDA the forward runs under bf16 autocast (`--bf16`, default on).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import DataError, RetrvError
from retrv.progress import ProgressCallback, emit

if TYPE_CHECKING:
    import torch

    from retrv.train.config import TrainConfig

StepFn = Callable[[Any, Any], "tuple[torch.Tensor, dict[str, float]]"]
BatchStream = Callable[[int], Iterator[Any]]

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class DataIssue:
    source: str  # "path/to/file.jsonl:17"
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class DataIssues:
    """Bad examples found while loading or batching: each reported once (progress stage "data"), then skipped."""

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self.items: list[DataIssue] = []
        self._seen: set[DataIssue] = set()
        self.progress = progress

    def report(self, source: str, reason: str) -> None:
        issue = DataIssue(source, reason)
        if issue in self._seen:
            return
        self._seen.add(issue)
        self.items.append(issue)
        emit(self.progress, "data", len(self.items), None, f"skipped {issue}")

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class TrainSummary:
    steps: int  # optimizer steps completed in total
    start_step: int  # 0, or the checkpoint step this run resumed from
    final_loss: float
    out_dir: Path
    metrics_path: Path
    last_checkpoint: Path | None
    data_issues: list[DataIssue] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0  # training examples after bad ones were skipped (set by the stage)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ShuffledBatches:
    """A list of examples as an endless, seeded, resumable stream of batches (one fresh permutation per epoch).

    `collate(examples) -> batch` may return None to drop a batch whose every example turned out bad.
    """

    def __init__(
        self, examples: Sequence[Any], batch_size: int, seed: int = 0, collate: Callable[[list[Any]], Any] = list
    ) -> None:
        if not examples:
            raise DataError("the dataset is empty: nothing to train on")
        self.examples, self.batch_size, self.seed, self.collate = examples, batch_size, seed, collate
        # Drop the ragged last batch (every batch the same size) unless that would leave no batch at all.
        self.per_epoch = max(1, len(examples) // batch_size)

    def __call__(self, start: int = 0) -> Iterator[Any]:
        import torch

        epoch, offset = divmod(start, self.per_epoch)
        while True:
            order = torch.randperm(
                len(self.examples), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            )
            for i in range(offset, self.per_epoch):
                batch = self.collate(
                    [self.examples[j] for j in order[i * self.batch_size : (i + 1) * self.batch_size].tolist()]
                )
                yield batch
            epoch, offset = epoch + 1, 0


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; decay only on matrices (nanoGPT's rule: not biases, norms, scalars)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RetrvError("nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant / linear decay / cosine decay to 0 at max_steps."""
    import torch

    warmup, total, kind = config.warmup_steps, config.max_steps, config.lr_schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    root = Path(out_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if root.is_dir() else []
    return done[-1] if done else None


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    persistent = model.state_dict(keep_vars=True).keys()  # non-persistent buffers are not state
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach() for n, b in model.named_buffers() if n in persistent and n not in state})
    return {n: t.contiguous().cpu() for n, t in state.items()}


def _load_trainable_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    missing_ok = load_file(str(path))
    result = model.load_state_dict(missing_ok, strict=False)
    if result.unexpected_keys:
        raise RetrvError(f"{path}: checkpoint does not fit this model (unexpected {result.unexpected_keys[:3]})")


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in np_state["state"].items()}
    return {
        "python": random.getstate(),
        "numpy": json.dumps(np_state),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np_state = json.loads(state["numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _accelerator(device: str) -> Any:
    try:
        from accelerate import Accelerator
    except ImportError as e:  # pragma: no cover - accelerate ships with the train extra
        raise RetrvError("training needs accelerate: pip install 'retrv[train]'") from e
    from retrv.devices import resolve_device

    # Mixed precision is done with our own autocast (see train): Accelerator's global state refuses a
    # second, different mixed_precision in the same process, which would break successive stages.
    return Accelerator(cpu=resolve_device(device).device == "cpu")


def _allreduce_grads(accelerator: Any, params: list[torch.nn.Parameter]) -> None:
    """Average gradients over processes with a single flat all-reduce."""
    import torch

    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _prepare_out_dir(out: Path, resume: bool, progress: ProgressCallback | None) -> Path | None:
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise RetrvError(
            f"{out} already holds checkpoints ({ckpt.name}); pass --resume to continue, or choose a new --out"
        )
    if resume and ckpt is None:
        emit(progress, "train", 0, None, f"--resume: no checkpoint in {out}, starting from step 0")
    return ckpt


def _rewrite_metrics(path: Path, keep_until: int) -> None:
    """On resume, drop metrics lines written after the checkpoint (those steps run again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= keep_until:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the crash
            continue
    path.write_text("".join(line + "\n" for line in kept))


def train(
    model: torch.nn.Module,
    step_fn: StepFn,
    batches: BatchStream,
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    progress: ProgressCallback | None = None,
    issues: DataIssues | None = None,
) -> TrainSummary:
    """Run `config.max_steps` optimizer steps (minus those already done when resuming). See the module doc."""
    import torch
    from accelerate.utils import send_to_device

    config.validate()
    started = time.perf_counter()
    out = Path(config.out)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS
    accelerator = _accelerator(config.device)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    ckpt = _prepare_out_dir(out, config.resume, progress)
    set_seed(config.seed + rank)

    model.to(accelerator.device)
    optimizer = optimizer or build_optimizer(model, config.lr, config.weight_decay)
    scheduler = scheduler or build_scheduler(optimizer, config)
    params = [p for p in model.parameters() if p.requires_grad]

    step, micro, start_step = 0, 0, 0  # optimizer steps done; global micro-batches consumed (all processes)
    last_loss = math.nan
    if ckpt is not None:
        meta = json.loads((ckpt / "trainer_state.json").read_text())
        step, micro, last_loss = meta["step"], meta["micro_batches"], meta.get("loss", math.nan)
        start_step = step
        _load_trainable_state(model, ckpt / "model.safetensors")
        state = _load_tensors_only(ckpt / "training_state.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = ckpt / f"rng-{rank}.pt"
        if rng.exists():
            _set_rng_state(_load_tensors_only(rng))
        emit(progress, "train", step, config.max_steps, f"resumed from {ckpt}")
    if main:
        if ckpt is None:
            metrics_path.write_text("")
        else:
            _rewrite_metrics(metrics_path, step)
    accelerator.wait_for_everyone()

    use_bf16 = config.bf16 and accelerator.device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    stream = islice(batches(micro), rank, None, world)
    last_ckpt = ckpt
    model.train()
    while step < config.max_steps:
        optimizer.zero_grad(set_to_none=True)
        losses: list[float] = []
        sums: dict[str, float] = {}
        for _ in range(config.grad_accum):
            batch = next(stream)
            micro += world
            if batch is None:  # every example of this batch was bad (already reported)
                continue
            with autocast():
                loss, metrics = step_fn(model, send_to_device(batch, accelerator.device))
            (loss / config.grad_accum).backward()
            losses.append(float(loss.detach()))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        _allreduce_grads(accelerator, params)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        step += 1

        n = len(losses) or math.nan  # nan when every micro-batch of this step was dropped as bad data
        local = torch.tensor([sum(losses) / n, *(v / n for v in sums.values())], device=accelerator.device)
        values = accelerator.reduce(local, reduction="mean").tolist() if world > 1 else local.tolist()
        last_loss = values[0]
        record = {
            "step": step,
            "loss": last_loss,
            "lr": lr,
            "seconds": round(time.perf_counter() - started, 3),
            **dict(zip(sums, values[1:])),
        }
        if main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        extras = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "lr", "seconds"))
        emit(progress, "train", step, config.max_steps, f"{extras} lr {lr:.3g}")

        if (config.save_every and step % config.save_every == 0) or step == config.max_steps:
            last_ckpt = _save_checkpoint(
                accelerator, out, model, optimizer, scheduler, config, step=step, micro=micro, loss=last_loss
            )
            emit(progress, "checkpoint", step, config.max_steps, str(last_ckpt))

    model.eval()
    return TrainSummary(
        steps=step,
        start_step=start_step,
        final_loss=last_loss,
        out_dir=out,
        metrics_path=metrics_path,
        last_checkpoint=last_ckpt,
        data_issues=list(issues.items) if issues else [],
        seconds=time.perf_counter() - started,
    )


def _load_tensors_only(path: Path) -> Any:
    """A state file this loop wrote (torch.save of tensors, numbers and dicts), read with `weights_only=True`:
    anything else, a pickle that would run code above all, is refused in one line."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RetrvError(f"{path}: not a training state this retrv wrote, refused ({first[:120]})") from None


def _save_checkpoint(
    accelerator: Any,
    out: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    config: TrainConfig,
    *,
    step: int,
    micro: int,
    loss: float,
) -> Path:
    import torch
    from safetensors.torch import save_file

    final = out / CHECKPOINTS / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(_trainable_state(model), str(tmp / "model.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "training_state.pt"
        )
        meta = {
            "step": step,
            "micro_batches": micro,
            "loss": loss,
            "world_size": accelerator.num_processes,
            "config": asdict(config),
        }
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if config.keep_checkpoints:
            done = sorted(p for p in final.parent.glob("step-*") if not p.name.endswith(".tmp"))
            for old in done[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_pretrained_model(
    out: str | Path, model: Any, tokenizer: Any, image_processor: Any, record: dict[str, Any], summary: TrainSummary
) -> None:
    """Write a trained transformers model as a plain model directory (safetensors, tokenizer, image processor)
    plus `retrv-train.json` (`record` + steps, final loss, examples, skipped lines); main process only."""
    from accelerate import PartialState

    from retrv.hub import quiet_transformers

    if not PartialState().is_main_process:
        return
    out = Path(out)
    with quiet_transformers():
        model.to("cpu").save_pretrained(out)
        tokenizer.save_pretrained(out)
        image_processor.save_pretrained(out)
    record = {
        **record,
        "steps": summary.steps,
        "final_loss": summary.final_loss,
        "examples": summary.examples,
        "skipped": [str(i) for i in summary.data_issues],
    }
    (out / "retrv-train.json").write_text(json.dumps(record, indent=2, default=str))
