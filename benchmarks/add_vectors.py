"""Adding precomputed vectors through the library: Store.upsert in batches, then the ANN index.

    .venv/bin/python benchmarks/add_vectors.py                    # 1M random 512-d vectors, batches of 50k
    .venv/bin/python benchmarks/add_vectors.py --n 1000000 --large ivf     # IVF instead of HNSW above 50k
    .venv/bin/python benchmarks/add_vectors.py --n 100000 --keep /tmp/idx100k
    .venv/bin/python benchmarks/add_vectors.py --n 1000000 --ann-memory 256MB --data clustered  # the budget's kind

Reports the wall time of each phase and the peak RSS of the process (ru_maxrss). The vectors are
generated batch by batch (no encoder runs), as a build reading them from disk would. The index lives
in a temporary directory, removed at the end unless `--keep PATH` (for search_latency.py --index).
Results go in docs/benchmarks.md §3.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RUST_LOG", "error")

from retrv.config import parse_size
from retrv.index.ann import AnnIndex, AnnParams
from retrv.index.store import Store
from retrv.items import Item


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def batch(start: int, n: int, dim: int, data: str = "random") -> tuple[list[Item], np.ndarray]:
    rng = np.random.default_rng([0, start])
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if data == "clustered":  # as search_latency.py: 1000 centres, each point centre + noise of the same norm
        centres = np.random.default_rng(12345).standard_normal((1000, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        vectors += centres[rng.integers(0, 1000, n)]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [
        Item(
            id=f"vec{i:08d}",
            source=f"/bench/images/{i:08d}.jpg",
            modality="image",
            image_path=f"/bench/images/{i:08d}.jpg",
            mtime=1.7e9 + i,
            size=100_000 + i,
            content_hash=f"{i:064x}",
        )
        for i in range(start, start + n)
    ]
    return items, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--exact-max", type=int, default=50_000)
    parser.add_argument("--large", choices=["hnsw", "ivf"], default="hnsw", help="the ANN kind above --exact-max")
    parser.add_argument("--keep", help="build the index here and keep it (the directory must not exist)")
    parser.add_argument("--ann-memory", help="a memory budget for the ANN (e.g. 256MB): the kind is chosen to fit")
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    args = parser.parse_args()

    tmp = None if args.keep else tempfile.mkdtemp(prefix="retrv-add-bench-")
    root = Path(args.keep) if args.keep else Path(tmp) / "index"
    phases: list[tuple[str, float]] = []
    params = AnnParams(large=args.large)
    try:
        start = time.perf_counter()
        store = Store.create(root, encoder_spec="benchmark/random", dim=args.dim)
        generate_s = 0.0
        for lo in range(0, args.n, args.batch):
            t = time.perf_counter()
            items, vectors = batch(lo, min(args.batch, args.n - lo), args.dim, args.data)
            generate_s += time.perf_counter() - t
            store.upsert(items, vectors)
        phases.append(("Store.upsert (incl. generating vectors)", time.perf_counter() - start))
        phases.append(("  of which generating vectors + Items", generate_s))

        t = time.perf_counter()
        budget = parse_size(args.ann_memory) if args.ann_memory else None
        ann = AnnIndex.load_or_build(store, exact_max=args.exact_max, params=params, budget=budget)
        phases.append((f"AnnIndex.load_or_build ({ann.kind}, incl. writing the cache)", time.perf_counter() - t))
        total = time.perf_counter() - start
        rss = peak_rss_gib()

        stats = ann.stats()
        del ann  # so that the reopen below does not hold two indices at once
        t = time.perf_counter()
        reopened = AnnIndex.load_or_build(Store.open(root), exact_max=args.exact_max, params=params)
        assert reopened.source == "cache" and reopened.ntotal == args.n
        phases.append(("reopen: Store.open + ANN from cache", time.perf_counter() - t))

        print(
            f"{args.n:,} vectors x {args.dim}-d, batches of {args.batch:,}, "
            f"{store.version() - 1} Lance versions, {stats}"
        )
        print("| phase | seconds |")
        print("|---|---:|")
        for name, seconds in phases:
            print(f"| {name} | {seconds:.1f} |")
        print(f"| **total: upsert + ANN** | **{total:.1f}** |")
        print(
            f"\npeak RSS (after upsert + ANN build): {rss:.2f} GiB; after the reopen too: {peak_rss_gib():.2f} GiB; "
            f"on disk: {store.size_on_disk() / 2**30:.2f} GiB"
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
