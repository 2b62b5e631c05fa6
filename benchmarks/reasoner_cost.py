"""Benchmark 5: the cost of one `reason`-mode resolve by how the candidates enter the prompt, and benchmark 6:
`score`-mode throughput. Random weights: the cost does not depend on their values.

    .venv/bin/python benchmarks/reasoner_cost.py                        # CPU config (~66M params), K=10,50
    .venv/bin/python benchmarks/reasoner_cost.py --ks 10,50,100 --repeats 3
    .venv/bin/python benchmarks/reasoner_cost.py --config 3b --device cuda --ks 10,50,100
    .venv/bin/python benchmarks/reasoner_cost.py --config cpu-qwen3 --image-size 512 --ks 50  # Qwen3: 256 tokens

What one resolve is (the timed region, the same code for every arm: `Reasoner.prepare`, then the decode loop):
  encode the query -> make the candidates' tokens -> build the prompt -> prefill -> decode `--decode-tokens`
  tokens, forced (the same token ids in every arm, so each decodes exactly as many steps; no inspections).
  * icm-chat / icm-bare: each candidate's content and memory tokens come precomputed, as `retrv compress`
    stores them; the relation token (memory x query cross-attention) is computed in the timed region.
    Prompt: 2 soft tokens per candidate, in the chat style (system prompt, instruction) or the bare one.
  * glance: each candidate's image through the vision tower at the glance budget (at most 4 tokens), in the
    timed region: nothing stores glance tokens.
  * full (the paper's "w/o ICM"): every candidate's image through the vision tower at the full budget (256
    tokens at 448 px), in the timed region: in real use nothing caches full tokens (the index keeps only
    the ICM rows), so the vision tower is part of what the full arm costs.

Each (K, arm) runs in fresh child processes. Time: one warm-up resolve, then `--repeats` timed ones
(median and min). Memory: on the CPU a separate child (glibc `MALLOC_MMAP_THRESHOLD_` fixed at 128 KiB so
freed buffers go back to the OS and RSS follows live memory) loads the model, precomputes the features,
resets the peak-RSS mark (`/proc/self/clear_refs` = 5), runs one resolve and reports VmHWM minus the RSS
at the reset; on CUDA, `torch.cuda.max_memory_allocated` minus the allocation before the resolve.

Score mode: `Scorer.rerank` of K text+image candidates (images opened, processed, through the vision
tower and the LLM, one forward per candidate in batches), warm-up then `--repeats` runs -> candidates/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
QUERY = "a small red circle left of a blue square"
FORCED_TEXT = (
    "The ideal result shows a small red circle left of a blue square. Candidate 1 is wrong. Candidate 2 matches. "
)

# "cpu": ~56M-param Qwen2.5-VL; "cpu-qwen3": the same sizes as a Qwen3-VL (32-px merged patches, DeepStack
# features from each vision layer into the first four text layers); "3b": the shapes of Qwen2.5-VL-3B-Instruct.
CONFIGS: dict[str, dict] = {
    "cpu": dict(hidden=768, layers=10, heads=12, kv_heads=4, vision_hidden=256, vision_depth=4),
    "cpu-qwen3": dict(
        hidden=768, layers=10, heads=12, kv_heads=4, vision_hidden=256, vision_depth=4, architecture="qwen3_vl"
    ),
    "3b": dict(hidden=2048, layers=36, heads=16, kv_heads=2, vision_hidden=1280, vision_depth=32),
}


# ---------------------------------------------------------------- building the model (parent, once)


def build_3b_shaped(out: Path, device: str) -> None:
    """A random Qwen2.5-VL with the exact shapes of Qwen2.5-VL-3B-Instruct (vocab 151936), bfloat16."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from retrv.train.random_models import train_byte_bpe_tokenizer

    tok = train_byte_bpe_tokenizer()
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=128000,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_checkpoint(work: Path, config: str, device: str, image_size: int) -> Path:
    """Model dir + a stage-"icm" checkpoint on top of it (random ICM weights); reused when present."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner, save_reasoner
    from retrv.train.random_models import build_random_vlm

    model_dir, ckpt = work / f"model-{config}", work / f"ckpt-{config}"
    if (ckpt / "retrv-reasoner.json").is_file():
        return ckpt
    if config == "3b":
        build_3b_shaped(model_dir, device)
    else:
        build_random_vlm(model_dir, **CONFIGS[config])
    # the tiny builder's processor stops at 4x4 tokens; let candidates reach `image_size` (load_reasoner caps at 256)
    patch = 16 if CONFIGS[config].get("architecture", "qwen2_5_vl") != "qwen2_5_vl" else 14
    Qwen2VLImageProcessorPil(
        min_pixels=(4 * patch) ** 2, max_pixels=image_size * image_size, patch_size=patch, merge_size=2
    ).save_pretrained(model_dir)
    loaded = load_reasoner(str(model_dir), device=device)
    import torch

    torch.manual_seed(1)
    icm = ICM(ICMConfig(hidden_size=CONFIGS[config]["hidden"]))
    save_reasoner(loaded, ckpt, stage="icm", icm=icm)
    return ckpt


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    """Deterministic natural-ish images: a two-colour gradient with a few filled shapes."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}_{size}.png"
        paths.append(path)
        if path.is_file():
            continue
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, size)[None, :, None] * np.linspace(0.3, 1, size)[:, None, None]
        im = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x, y = rng.integers(0, size, 2)
            r = int(rng.integers(size // 16, size // 4))
            box, fill = [int(x - r), int(y - r), int(x + r), int(y + r)], tuple(int(c) for c in rng.integers(0, 256, 3))
            [draw.ellipse, draw.rectangle][int(rng.integers(0, 2))](box, fill=fill)
        im.save(path)
    return paths


# ---------------------------------------------------------------- the children


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakMemory:
    """Peak memory of a region above its start: RSS high-water mark on the CPU, allocator peak on CUDA."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _status_kb("VmRSS") * 1024

    def stop(self) -> dict[str, int]:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        return {"baseline_bytes": self.base, "peak_bytes": peak, "delta_bytes": peak - self.base}


ARMS = ("icm-chat", "icm-bare", "glance", "full")


def child_resolve(args: argparse.Namespace) -> dict:
    import torch

    from retrv.items import Item, Query
    from retrv.rerank.base import Candidate
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.decode import DecodeOptions, generate_with_inspection
    from retrv.rerank.reasoner import Reasoner, ReasonerOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_reasoner(args.ckpt, device=args.device, require_icm=True)
    shown = "icm" if args.arm.startswith("icm") else args.arm
    reasoner = Reasoner.from_loaded(
        loaded, ReasonerOptions(candidate_tokens=shown, max_new_tokens=args.decode_tokens, max_inspections=0)
    )
    reasoner.prompt_style = "bare" if args.arm == "icm-bare" else "chat"
    paths = json.loads(Path(args.images).read_text())[: args.k]
    items = [Item(id=f"c{i}", source=p, modality="image", image_path=p) for i, p in enumerate(paths)]
    query = Query(text=QUERY)
    candidates = [Candidate(it, 1.0 - i / len(items)) for i, it in enumerate(items)]
    if shown == "icm":  # outside the timed region: the rows `retrv compress` stores
        for start in range(0, len(items), 8):
            rows = reasoner.precompute(items[start : start + 8])
            for j, c in enumerate(candidates[start : start + 8]):
                c.precomputed = {name: values[j] for name, values in rows.items()}
    # glance and full: the candidates' tokens come from the vision tower inside the timed region, since nothing
    # stores them in real use (the index keeps only the ICM rows)

    forced = loaded.tokenizer(FORCED_TEXT, add_special_tokens=False)["input_ids"]
    forced = (forced * (args.decode_tokens // len(forced) + 1))[: args.decode_tokens]

    def force(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(generated)]] = 0.0
        return out

    decode = DecodeOptions(max_new_tokens=args.decode_tokens, max_inspections=0)

    def token_breakdown(prompt) -> dict:
        ids = prompt.token_ids
        soft = int((ids == loaded.token_id("icm")).sum())
        image = int((ids == loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        return {
            "prompt_tokens": len(prompt),
            "soft_tokens": soft,
            "image_tokens": image,
            "text_tokens": len(prompt) - soft - image,
        }

    def resolve(cands: list = candidates) -> dict:
        sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        sync()
        started = time.perf_counter()
        with torch.no_grad():
            prepared = reasoner.prepare(query, cands)
            sync()
            prepared_at = time.perf_counter()
            trace = generate_with_inspection(
                loaded.model,
                loaded.tokenizer,
                prepared.prompt,
                prepared.inspect,
                len(cands),
                decode,
                special=reasoner.special,
                logits_hook=force,
            )
        sync()
        total = time.perf_counter() - started
        assert len(trace.generated_ids) == args.decode_tokens and not trace.inspected, trace.stop_reason
        return {
            "total_s": total,
            "prepare_s": prepared_at - started,
            "prefill_s": trace.latency_ms["prefill"] / 1000,
            "decode_s": trace.latency_ms["decode"] / 1000,
            **token_breakdown(prepared.prompt),
        }

    result: dict = {"k": args.k, "arm": args.arm, "threads": torch.get_num_threads()}
    if args.measure == "tokens":  # the prompt only: no decoding
        with torch.no_grad():
            result["runs"] = [token_breakdown(reasoner.prepare(query, candidates).prompt)]
        return result
    resolve(candidates[: min(len(candidates), 10)])  # warm-up: one-time library / kernel initialisation
    meter = PeakMemory(args.device)
    if args.measure == "memory":
        meter.start()
        result["runs"] = [resolve()]
        result["memory"] = meter.stop()
        return result
    result["runs"] = []
    for _ in range(args.repeats):
        if args.device == "cuda":  # one process can also measure memory: the allocator's peak is exact
            meter.start()
        result["runs"].append(resolve())
        if args.device == "cuda":
            result["memory"] = meter.stop()
    return result


def child_score(args: argparse.Namespace) -> dict:
    import torch

    from retrv.items import Item, Query
    from retrv.rerank.base import Candidate
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.scorer import Scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_reasoner(args.ckpt, device=args.device)
    scorer = Scorer(loaded, batch_size=args.batch_size)
    paths = json.loads(Path(args.images).read_text())[: args.k]
    candidates = [
        Candidate(
            Item(id=f"c{i}", source=p, modality="image,text", text=f"photo {i}: shapes on a gradient", image_path=p),
            1.0 - i / len(paths),
        )
        for i, p in enumerate(paths)
    ]
    query = Query(text=QUERY)
    scorer.rerank(query, candidates[: args.batch_size])  # warm-up
    times, tokens = [], 0
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = scorer.rerank(query, candidates)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        tokens = result.prompt_tokens
        assert all(s is not None for s in result.rerank_scores)
    return {"k": args.k, "batch_size": args.batch_size, "times_s": times, "prompt_tokens": tokens}


# ---------------------------------------------------------------- the parent


def run_child(args: argparse.Namespace, extra: list[str], malloc_env: bool = False) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if malloc_env:
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [
        sys.executable,
        str(HERE),
        "--ckpt",
        str(args.ckpt),
        "--images",
        str(args.images),
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--decode-tokens",
        str(args.decode_tokens),
        "--threads",
        str(args.threads),
        "--child",
        *extra,
    ]  # a later flag in `extra` wins
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.child_timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tokens(run: dict) -> str:
    return f"{run['prompt_tokens']} ({run['soft_tokens'] or run['image_tokens']} {'soft' if run['soft_tokens'] else 'image'} + {run['text_tokens']} text)"


def summarise(rows: list[dict], scores: list[dict], counts: list[dict] = ()) -> str:
    """Markdown tables: per (K, arm), then the full/ICM ratios per K, then score mode."""
    mib = 1024 * 1024
    med = lambda r, key="total_s": statistics.median(x[key] for x in r["runs"])  # noqa: E731
    low = lambda r: min(x["total_s"] for x in r["runs"])  # noqa: E731
    lines = [
        "| K | arm | prompt tokens | resolve median (min) s | prepare / prefill / decode median s | runs | peak mem Δ MiB (abs MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = r.get("memory", {})
        lines.append(
            f"| {r['k']} | {r['arm']} | {_tokens(r['runs'][0])} | {med(r):.2f} ({low(r):.2f}) "
            f"| {med(r, 'prepare_s'):.3f} / {med(r, 'prefill_s'):.2f} / {med(r, 'decode_s'):.2f} | {len(r['runs'])} "
            f"| {mem.get('delta_bytes', 0) / mib:.1f} ({mem.get('peak_bytes', 0) / mib:.0f}) |"
        )
    measured = {(r["k"], r["arm"]) for r in rows}
    for c in [c for c in counts if (c["k"], c["arm"]) not in measured]:
        lines.append(f"| {c['k']} | {c['arm']} | {_tokens(c['runs'][0])} | not run | | 0 | |")
    by = {(r["k"], r["arm"]): r for r in [*counts, *rows]}
    lines += [
        "",
        "| K | arm | prompt tokens full/arm | time full/arm (median; min) | peak mem Δ full/arm | abs peak full/arm |",
        "|---|---|---|---|---|---|",
    ]
    for k in sorted({r["k"] for r in [*rows, *counts]}):
        for arm in [a for a in ARMS if a != "full" and (k, a) in by and (k, "full") in by]:
            f, i = by[(k, "full")], by[(k, arm)]
            line = f"| {k} | {arm} | {f['runs'][0]['prompt_tokens'] / i['runs'][0]['prompt_tokens']:.1f}x |"
            if "total_s" in f["runs"][0] and "total_s" in i["runs"][0]:
                line += f" {med(f) / med(i):.1f}x; {low(f) / low(i):.1f}x |"
            else:
                line += " not run |"
            fm, im = f.get("memory"), i.get("memory")
            if fm and im:
                line += f" {fm['delta_bytes'] / im['delta_bytes']:.1f}x | {fm['peak_bytes'] / im['peak_bytes']:.2f}x |"
            else:
                line += " | |"
            lines.append(line)
    if scores:
        lines += [
            "",
            "| score mode K | batch | median (min) s | candidates/s (median) | prompt tokens |",
            "|---|---|---|---|---|",
        ]
        for s in scores:
            t = s["times_s"]
            lines.append(
                f"| {s['k']} | {s['batch_size']} | {statistics.median(t):.2f} ({min(t):.2f}) | {s['k'] / statistics.median(t):.2f} | {s['prompt_tokens']} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ks", default="10,50", help="comma-separated candidate counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--image-size", type=int, default=448, help="square candidate images, px (448 -> 256 tokens)")
    p.add_argument("--score-k", type=int, default=50, help="0 skips score mode")
    p.add_argument("--score-batch-sizes", default="8,16")
    p.add_argument("--score-repeats", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument(
        "--tokens-only-ks", default="", help="K values whose prompts are only built and counted (no forward)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch's default)")
    p.add_argument("--report", type=Path, nargs="+", help="merge --json files of earlier runs and print the tables")
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the separate peak-memory children")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "retrv-reasoner-cost")
    p.add_argument("--json", type=Path, help="also write every raw figure here")
    p.add_argument("--child-timeout", type=float, default=1800)
    # child-only
    p.add_argument("--child", choices=["resolve", "score"])
    p.add_argument("--arm", choices=ARMS)
    p.add_argument("--k", type=int)
    p.add_argument("--measure", choices=["time", "memory", "tokens"], default="time")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ckpt")
    p.add_argument("--images")
    args = p.parse_args()

    if args.child:
        result = child_resolve(args) if args.child == "resolve" else child_score(args)
        print(json.dumps(result))
        return
    if args.report:
        runs = [json.loads(f.read_text()) for f in args.report]
        for r in runs:
            print(json.dumps(r["header"]))
        print(
            summarise(
                [x for r in runs for x in r["resolve"]],
                [x for r in runs for x in r["score"]],
                [x for r in runs for x in r.get("tokens", [])],
            )
        )
        return

    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ks = [int(k) for k in args.ks.split(",") if k]
    tk = [int(k) for k in args.tokens_only_ks.split(",") if k]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    args.ckpt = build_checkpoint(args.work, args.config, args.device, args.image_size)
    if args.device == "cuda":  # the children need the whole GPU
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    paths = make_images(args.work / "images", max(ks + tk + [args.score_k]), args.image_size)
    args.images = args.work / f"images-{args.image_size}.json"
    args.images.write_text(json.dumps([str(x) for x in paths]))
    header = {
        "config": args.config,
        "build": CONFIGS[args.config],
        "device": args.device,
        "image_size": args.image_size,
        "decode_tokens": args.decode_tokens,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_before": os.getloadavg(),
        "params": param_counts(args.ckpt),
    }
    print(json.dumps(header), file=sys.stderr, flush=True)
    rows, scores, counts = [], [], []
    for k in [int(k) for k in args.tokens_only_ks.split(",") if k]:
        for arm in ARMS:
            counts.append(run_child(args, ["resolve", "--arm", arm, "--k", str(k), "--measure", "tokens"]))
            print(json.dumps(counts[-1]), file=sys.stderr, flush=True)
    for k in ks:
        for arm in args.arms.split(","):
            row = run_child(args, ["resolve", "--arm", arm, "--k", str(k)])
            if args.device == "cpu" and not args.no_memory:
                row["memory"] = run_child(
                    args, ["resolve", "--arm", arm, "--k", str(k), "--measure", "memory"], malloc_env=True
                )["memory"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.score_k:
        for bs in [int(b) for b in args.score_batch_sizes.split(",") if b]:
            scores.append(
                run_child(
                    args,
                    ["score", "--k", str(args.score_k), "--batch-size", str(bs), "--repeats", str(args.score_repeats)],
                )
            )
            print(json.dumps(scores[-1]), file=sys.stderr, flush=True)
    header["load_after"] = os.getloadavg()
    header["wall_s"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(
            json.dumps({"header": header, "resolve": rows, "score": scores, "tokens": counts}, indent=1)
        )
    print(json.dumps(header))
    print(summarise(rows, scores, counts))


def param_counts(ckpt: Path) -> dict[str, int]:
    """Parameters of the LLM, the vision tower and the ICM, read from the safetensors headers."""
    from safetensors import safe_open

    from retrv.rerank.checkpoint import ReasonerConfig

    counts = {"llm": 0, "vision": 0, "icm": 0}
    base = Path(ReasonerConfig.read(ckpt).base_model)
    for f in sorted(base.glob("model*.safetensors")) + [ckpt / "icm.safetensors"]:
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (a safe_open is not iterable)
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= d
                counts[
                    "icm"
                    if f.name == "icm.safetensors"
                    else "vision"
                    if ".visual." in name or name.startswith("visual")
                    else "llm"
                ] += n
    return counts


if __name__ == "__main__":
    main()
