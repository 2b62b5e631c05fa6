"""Benchmark 1: is I/O and decoding hidden behind the model during `build-index`?

Generates N photo-like JPEGs, then measures with the same encoder and batch size:
- model:     `encoder.encode_pixels` alone on tensors decoded and preprocessed beforehand;
- loader:    decode + preprocess alone (`load_image` + `encoder.preprocess`) on one thread;
- pipeline:  `build_index` end to end into a fresh index (scan, hash, decode on loader threads,
             model, one Lance write per batch).
The figure of merit is pipeline / model images per second (goal >= 0.8). Model and pipeline
runs alternate and the best of each is kept.

On a CPU shared with other work, wall time favours the pipeline (its loader threads win it a larger
share of the cores), so the script also reports process CPU time: model CPU / pipeline CPU is the
fraction of the pipeline's work that is the model, which is the wall ratio to expect when the
model alone already keeps every core busy (a lower bound otherwise).

    .venv/bin/python benchmarks/indexing_throughput.py --images 256 --encoder lite
    .venv/bin/python benchmarks/indexing_throughput.py --images 128 --ray-workers 1 2   # also build-index --ray

With `--ray-workers`, the same build also runs with its encode step on a local Ray cluster (`build-index --ray`)
with each number of encoder actors, and the ratio to the local build is reported, as is the overhead of one
such build (the wall time of a Ray build of a single image: starting the actors, loading one model each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RUST_LOG", "error")


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour gradients, a few shapes and sensor noise (quality 90)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(40, 215, 3)
        base = c + 60 * (a * (xx / w)[..., None] + b * (yy / h)[..., None])
        noisy = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(noisy)
        draw = ImageDraw.Draw(im)
        for _ in range(5):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        path = folder / f"img{i:04d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--encoder", default="lite", help="encoder spec (lite, clip:DIR, ...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best is kept")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--ray-workers", type=int, nargs="*", default=[], help="also build on a local Ray cluster")
    args = parser.parse_args()

    import torch

    from retrv.encoders.registry import load_encoder
    from retrv.images import load_image
    from retrv.index.build import build_index
    from retrv.index.store import Store

    width, height = (int(v) for v in args.size.lower().split("x"))
    encoder = load_encoder(args.encoder, device="cpu")
    with tempfile.TemporaryDirectory(prefix="retrv-bench-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        t = time.perf_counter()
        paths = make_jpegs(folder, args.images, (width, height))
        generate_s = time.perf_counter() - t
        megabytes = sum(p.stat().st_size for p in paths) / 1e6

        def loader_pass() -> tuple[float, list]:
            t = time.perf_counter()
            tensors = [encoder.preprocess(load_image(p)) for p in paths]
            return time.perf_counter() - t, tensors

        loader_s, tensors = min((loader_pass() for _ in range(args.repeats)), key=lambda r: r[0])
        encoder.encode_pixels(tensors[: args.batch_size])  # warm-up: first-call allocations

        def model_pass() -> tuple[float, float]:
            t, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(tensors), args.batch_size):
                encoder.encode_pixels(tensors[start : start + args.batch_size])
            return time.perf_counter() - t, time.process_time() - cpu

        model_runs, pipeline_runs = [], []
        for r in range(args.repeats):  # interleaved, so that a busy spell on a shared CPU hits both alike
            model_runs.append(model_pass())
            store = Store.create(Path(tmp) / f"index{r}", encoder_spec=encoder.spec, dim=encoder.dim)
            t, cpu = time.perf_counter(), time.process_time()
            report = build_index(
                store, encoder, [folder], batch_size=args.batch_size, loader_threads=args.loader_threads
            )
            pipeline_runs.append((time.perf_counter() - t, time.process_time() - cpu))
            assert report.encoded == args.images and not report.skipped, report.to_dict()
        (model_s, model_cpu), (pipeline_s, pipeline_cpu) = min(model_runs), min(pipeline_runs)
        ray_figures = ray_builds(args, encoder, folder, paths[0], Path(tmp), pipeline_s) if args.ray_workers else {}

    n = args.images
    figures = {
        "encoder": encoder.spec,
        "images": n,
        "size": f"{width}x{height}",
        "jpeg_mb": round(megabytes, 1),
        "batch_size": args.batch_size,
        "loader_threads": args.loader_threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "generate_s": round(generate_s, 2),
        "model_images_per_s": round(n / model_s, 1),
        "loader_images_per_s_1_thread": round(n / loader_s, 1),
        "pipeline_images_per_s": round(n / pipeline_s, 1),
        "model_runs_wall_cpu_s": [[round(w, 2), round(c, 2)] for w, c in model_runs],
        "pipeline_runs_wall_cpu_s": [[round(w, 2), round(c, 2)] for w, c in pipeline_runs],
        "ratio_pipeline_to_model": round(model_s / pipeline_s, 3),
        "cpu_time_ratio": round(model_cpu / pipeline_cpu, 3),
        **ray_figures,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{n} JPEGs {width}x{height} ({megabytes:.1f} MB), encoder {encoder.spec}, batch {args.batch_size}, "
        f"{args.loader_threads} loader threads, torch threads {figures['torch_threads']}, {os.cpu_count()} CPUs"
    )
    print(f"  model alone (pre-decoded tensors): {figures['model_images_per_s']:8.1f} images/s")
    print(f"  decode + preprocess, one thread:   {figures['loader_images_per_s_1_thread']:8.1f} images/s")
    print(f"  build_index end to end:            {figures['pipeline_images_per_s']:8.1f} images/s")
    print(f"  ratio pipeline / model:            {figures['ratio_pipeline_to_model']:8.3f}  (goal >= 0.8)")
    print(
        f"  CPU-time ratio model / pipeline:   {figures['cpu_time_ratio']:8.3f}  (share of the CPU work that is the model)"
    )
    for workers in args.ray_workers:
        ray = figures[f"ray_{workers}"]
        print(
            f"  --ray, {workers} encoder actor(s):       {ray['images_per_s']:8.1f} images/s  "
            f"(x{ray['ratio_to_local']:.2f} the local build; one-image build {ray['one_image_s']:.1f} s)"
        )


def ray_builds(args: argparse.Namespace, encoder, folder: Path, one: Path, tmp: Path, local_s: float) -> dict:
    """Images/s of `build_index` with its encode step on a local Ray cluster, per number of actors."""
    import shutil

    from retrv.index.build import build_index
    from retrv.index.distributed import RayCluster, connect, ray_encode_step
    from retrv.index.store import Store

    connect(RayCluster())
    single = tmp / "one"
    single.mkdir()
    shutil.copy(one, single / one.name)
    figures = {}
    for workers in args.ray_workers:
        step = ray_encode_step(RayCluster(workers=workers))
        runs = []
        for r in range(args.repeats):
            store = Store.create(tmp / f"ray{workers}-{r}", encoder_spec=encoder.spec, dim=encoder.dim)
            t = time.perf_counter()
            report = build_index(store, encoder, [folder], batch_size=args.batch_size, encode=step)
            runs.append(time.perf_counter() - t)
            assert report.encoded == args.images and not report.skipped, report.to_dict()
        store = Store.create(tmp / f"ray{workers}-one", encoder_spec=encoder.spec, dim=encoder.dim)
        t = time.perf_counter()
        build_index(store, encoder, [single], batch_size=args.batch_size, encode=step)
        one_s = time.perf_counter() - t
        figures[f"ray_{workers}"] = {
            "images_per_s": round(args.images / min(runs), 1),
            "runs_s": [round(w, 2) for w in runs],
            "ratio_to_local": round(local_s / min(runs), 3),
            "one_image_s": round(one_s, 2),
        }
    return figures


if __name__ == "__main__":
    main()
