"""Benchmark 7: where one step of `retrv train pretrain` spends its time, per stage of the tiny-world recipe,
and what the two speed-ups of the training step save.

    .venv/bin/python benchmarks/pretrain_step.py                     # the recipe's model, 32 a batch, 3 steps
    .venv/bin/python benchmarks/pretrain_step.py --image-size 112 --steps 5 --stages texts

A synthetic world is generated (`retrv data synth`, seed 0), a random tiny Qwen2.5-VL is built as the recipe
builds it (`--hidden 128 --layers 4 --vision-hidden 128 --image-size 224`), and for each stage's examples
(captions; the skills file; whole CoT texts in the bare reasoner layout) one batch is timed in four parts:
  collate   the PretrainCollator: images opened, the processor, ids and labels (CPU, single process);
  vision    the vision tower's forward on the batch's images alone (a share of forward);
  forward   `pretrain_loss` (vision tower + LLM + loss);
  backward  `loss.backward()` and an AdamW step.
One warm-up batch, then `--steps` timed ones; medians in seconds. Threads: OMP_NUM_THREADS as the recipe sets
it (1) unless set. Random weights: the cost does not depend on their values.

Two arms on the same batches: "before", the whole batch in one forward, padded to its longest row, and the
vision patch embedding as the model's Conv3d; "now", `pretrain_loss`'s length buckets (`LENGTH_BUCKET` rows a
forward, each cut to its own width) and the patch embedding as a matmul (`rerank.patch_embedding`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import retrv.train.pretrain

NOW_BUCKET = retrv.train.pretrain.LENGTH_BUCKET


def stage_examples(world: Path, stage: str) -> list:
    from retrv.train.pretrain_examples import load_examples

    if stage == "captions":
        return load_examples(world, captions=True, pairs=False, instructions=False)
    texts_file = world / "cot" / "train_skills.jsonl" if stage == "skills" else None
    return load_examples(world, captions=False, pairs=False, texts=True, texts_file=texts_file, instructions=False)


def set_arm(base, arm: str, batch_size: int) -> None:
    import torch

    import retrv.train.pretrain as caption
    from retrv.rerank.patch_embedding import PatchProjection

    embed = base.model.model.visual.patch_embed
    weight = embed.proj.weight
    if arm == "before":
        caption.LENGTH_BUCKET = batch_size
        kernel = tuple(weight.shape[2:])
        embed.proj = torch.nn.Conv3d(weight.shape[1], weight.shape[0], kernel_size=kernel, stride=kernel, bias=False)
        embed.proj.weight = weight
    else:
        caption.LENGTH_BUCKET = NOW_BUCKET
        if not isinstance(embed.proj, PatchProjection):
            embed.proj = PatchProjection(embed.proj)


def time_stage(base, world: Path, stage: str, arm: str, batch_size: int, steps: int) -> dict:
    import random

    import torch

    from retrv.train.loop import DataIssues
    from retrv.train.pretrain import PretrainCollator, pretrain_loss

    set_arm(base, arm, batch_size)
    examples = stage_examples(world, stage)
    collator = PretrainCollator(base.tokenizer, base.processor, DataIssues(), "" if stage == "captions" else "bare", 8)
    optimizer = torch.optim.AdamW(base.model.parameters(), lr=1e-4)
    rng = random.Random(0)
    parts: dict[str, list[float]] = {"collate": [], "vision": [], "forward": [], "backward": []}
    tokens, images = [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = collator(rng.sample(examples, batch_size))
        t1 = time.perf_counter()
        with torch.no_grad():
            if "pixel_values" in batch:
                base.model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        t2 = time.perf_counter()
        loss, _ = pretrain_loss(base.model, batch)
        t3 = time.perf_counter()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if step:  # the first batch warms up
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(seconds)
            tokens.append(int(batch["attention_mask"].sum()))
            images.append(int(batch["image_grid_thw"].shape[0]) if "image_grid_thw" in batch else 0)
    medians = {name: round(statistics.median(v), 3) for name, v in parts.items()}
    step_seconds = medians["collate"] + medians["forward"] + medians["backward"]
    return {
        "stage": stage,
        "arm": arm,
        "examples": len(examples),
        "tokens_per_batch": int(statistics.median(tokens)),
        "images_per_batch": int(statistics.median(images)),
        **medians,
        "step": round(step_seconds, 3),
        "vision_share_of_forward": round(medians["vision"] / medians["forward"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--stages", default="captions,skills,texts")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    import torch

    from retrv.data.synth import SynthConfig, generate
    from retrv.train.pretrain import PretrainConfig, build_base
    from retrv.train.pretrain_examples import load_examples, world_corpus

    with tempfile.TemporaryDirectory(prefix="retrv-bench-caption-") as tmp:
        world = Path(tmp) / "world"
        generate(world, SynthConfig(seed=0, size=48))
        config = PretrainConfig(
            data=str(world),
            out=str(Path(tmp) / "out"),
            hidden=128,
            layers=4,
            heads=4,
            kv_heads=2,
            vision_hidden=128,
            image_size=args.image_size,
        )
        corpus = world_corpus(load_examples(world, captions=True, pairs=False, texts=True, instructions=False), world)
        base = build_base(config, corpus)
        base.model.train()
        rows = [
            time_stage(base, world, s, arm, args.batch_size, args.steps)
            for s in args.stages.split(",")
            for arm in ("before", "now")
        ]
    machine = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
    }
    header = (
        "stage",
        "arm",
        "examples",
        "tokens_per_batch",
        "images_per_batch",
        "collate",
        "vision",
        "forward",
        "backward",
        "step",
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    print(json.dumps(machine))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
