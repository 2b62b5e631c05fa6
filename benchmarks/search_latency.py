"""Top-50 search: single-query latency (p50/p99) and recall@50 against exact search, flat vs HNSW (vs IVF).

    .venv/bin/python benchmarks/search_latency.py                       # 100k and 1M random 512-d unit vectors
    .venv/bin/python benchmarks/search_latency.py --n 100000 --ef 64 128 256 512 --data clustered
    .venv/bin/python benchmarks/search_latency.py --n 100000 --kinds hnsw ivf --nprobe 8 16 32
    .venv/bin/python benchmarks/search_latency.py --index /tmp/idx      # an index kept by add_vectors.py --keep
    .venv/bin/python benchmarks/search_latency.py --n 5000000 --dim 384 --data clustered --kinds ivfpq \
        --ann-memory 1GB --flat-queries 0                               # the kind a memory budget chooses

Each row also shows the index's memory: faiss's serialized size plus retrv's per-position arrays (an IVF-PQ's
re-rank vectors are a memory-mapped file in --tmp, not counted).

Vectors are generated in memory (or read from `--index`, whose cached HNSW is then used as is);
nothing is written outside a temporary directory. Results go in docs/benchmarks.md §2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RUST_LOG", "error")

from retrv.config import parse_size
from retrv.index.ann import ANN_PARAMS, AnnIndex, AnnParams
from retrv.index.ann_plan import plan_ann

CHUNK = 50_000


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def generate(n: int, dim: int, data: str, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, vectors) chunks. `random`: i.i.d. Gaussian directions, the hard case for any ANN.
    `clustered`: 1000 random centres, each point centre + noise of the same norm (cosine to its centre ~0.7)."""
    centres = unit_rows(np.random.default_rng(12345).standard_normal((1000, dim), dtype=np.float32))
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng([seed, start])
        m = min(CHUNK, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        if data == "clustered":
            x = centres[rng.integers(0, len(centres), m)] + unit_rows(x)
        yield np.arange(start, start + m, dtype=np.int64), unit_rows(x)


def latencies(ann: AnnIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per single query: seconds, and the keys found."""
    ann.search(queries[:1], k)  # warm-up
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, keys = ann.search(q[None], k)
        times.append(time.perf_counter() - start)
        found.append(keys[0])
    return np.array(times), np.stack(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def memory_mib(ann: AnnIndex) -> float:
    import faiss

    if ann.kind == "flat":
        faiss_bytes = ann.index.ntotal * ann.index.d * 4
    else:
        faiss_bytes = len(faiss.serialize_index(ann.index))
    return (faiss_bytes + ann.labels.nbytes + ann.dead.nbytes) / 2**20


def row(n: int, name: str, build_s: float | None, times: np.ndarray, rec: float, mib: float) -> str:
    build = f"{build_s:8.1f}" if build_s is not None else "  cached"
    p50, p99 = np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3
    return f"| {n:>9,} | {name:<34} | {build} | {mib:9.0f} | {p50:8.2f} | {p99:8.2f} | {rec:9.3f} |"


def run(n: int, args: argparse.Namespace) -> None:
    queries = unit_rows(np.random.default_rng(7).standard_normal((args.queries, args.dim), dtype=np.float32))
    if args.data == "clustered":
        queries = next(generate(args.queries, args.dim, "clustered", seed=99))[1]
    store = None
    if args.index:
        from retrv.index.store import Store

        store = Store.open(args.index)
        n, chunks = store.count(), store.iter_vectors(batch_size=CHUNK)
    else:
        chunks = generate(n, args.dim, args.data, seed=0)

    params = AnnParams(m=args.m, ef_construction=args.ef_construction)
    flat = AnnIndex.new("flat", args.dim)
    built: dict[str, AnnIndex] = {}
    for kind in args.kinds if not store else []:
        budget = parse_size(args.ann_memory) if args.ann_memory else None
        plan = plan_ann(n, args.dim, budget=budget, exact_max=0, large="ivf") if kind == "ivfpq" else None
        if plan is not None:
            print(f"plan for {args.ann_memory}: {plan.describe()}")
        refine = Path(args.tmp) / f"refine-{os.getpid()}.vectors" if kind == "ivfpq" else None
        built[kind] = AnnIndex.new(kind, args.dim, params=params, n_hint=n, plan=plan, refine=refine)
    seconds = dict.fromkeys(["flat", *built], 0.0)
    trainable = [ann for ann in built.values() if ann.kind in ("ivf", "ivfpq")]
    if trainable:  # i.i.d. chunks: the first ones are a fair sample
        sample = np.concatenate([v for _, v in generate(min(n, args.train), args.dim, args.data, seed=0)])
        for ann in trainable:
            start = time.perf_counter()
            ann.train(sample)
            seconds[ann.kind] += time.perf_counter() - start
        del sample
    for keys, vectors in chunks:
        for kind, ann in [("flat", flat), *built.items()]:
            start = time.perf_counter()
            ann.add(keys, vectors)
            seconds[kind] += time.perf_counter() - start
    for ann in built.values():
        if ann.refine is not None:
            ann.refine.finish()
    if store is not None:
        start = time.perf_counter()
        ann = AnnIndex.load_or_build(store, exact_max=args.exact_max)
        built, seconds[ann.kind] = {ann.kind: ann}, time.perf_counter() - start
        if ann.source != "cache":
            print(f"note: the index had no current ANN cache; it was built ({ann.kind}) in {seconds[ann.kind]:.1f} s")

    _, exact = flat.search(queries, args.k)  # batched: the ground truth
    if args.flat_queries:
        flat_times, flat_found = latencies(flat, queries[: args.flat_queries], args.k)
        flat_recall = recall(flat_found, exact[: args.flat_queries])
        print(row(n, "flat (exact)", seconds["flat"], flat_times, flat_recall, memory_mib(flat)), flush=True)
    del flat
    for kind, ann in built.items():
        build_s = None if ann.source == "cache" else seconds[kind]
        library_depth = ann._rerank_depth
        for setting in args.ef if kind == "hnsw" else args.nprobe if kind in ("ivf", "ivfpq") else [0]:
            if kind == "hnsw":
                ann.params = replace(ann.params, ef_search=setting)
                name = f"hnsw M={ann.params.m} efC={ann.params.ef_construction} ef={setting}"
            elif kind == "ivf":
                ann.params = replace(ann.params, nprobe=setting)
                name = f"ivf nlist={ann.nlist} nprobe={setting}"
            elif kind == "ivfpq":
                ann.params = replace(ann.params, nprobe=setting)
                assert ann.plan is not None
                name = f"{ann.plan.factory} nprobe={setting}"
            else:
                name = kind
            for factor in args.depth_factors if kind == "ivfpq" else [1.0]:
                # the exact re-rank's depth scaled by `factor` (1: what the library re-ranks)
                ann._rerank_depth = lambda k, f=factor, depth=library_depth: int(depth(k) * f)  # type: ignore[method-assign]
                label = f" re-rank {ann._rerank_depth(args.k)}" if kind == "ivfpq" else ""
                times, found = latencies(ann, queries, args.k)
                print(row(n, name + label, build_s, times, recall(found, exact), memory_mib(ann)), flush=True)
            del ann._rerank_depth
        if ann.refine is not None and ann.refine.path is not None:
            ann.refine.path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed for HNSW")
    parser.add_argument(
        "--flat-queries", type=int, default=30, help="single queries timed for flat (slow at 1M; 0: none)"
    )
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    parser.add_argument(
        "--kinds", nargs="+", choices=["hnsw", "ivf", "ivfpq"], default=["hnsw"], help="approximate indices to compare"
    )
    parser.add_argument("--ann-memory", help="ivfpq: the memory budget its parameters are chosen for (e.g. 1GB)")
    parser.add_argument(
        "--depth-factors", type=float, nargs="+", default=[1.0], help="ivfpq: also re-rank this many times deeper"
    )
    parser.add_argument("--train", type=int, default=100_000, help="IVF kinds: vectors trained on")
    parser.add_argument("--tmp", default="/tmp", help="where an IVF-PQ's re-rank vectors are written")
    parser.add_argument("--m", type=int, default=ANN_PARAMS.m)
    parser.add_argument("--ef-construction", type=int, default=ANN_PARAMS.ef_construction)
    parser.add_argument("--ef", type=int, nargs="+", default=[ANN_PARAMS.ef_search], help="HNSW efSearch values")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[ANN_PARAMS.nprobe], help="IVF nprobe values")
    parser.add_argument("--index", help="measure an existing index (its cached ANN) instead of generated vectors")
    parser.add_argument("--exact-max", type=int, default=50_000)
    args = parser.parse_args()
    import faiss

    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads for builds, "
        f"single queries on 1 thread; data: {args.index or args.data}, dim {args.dim}, top-{args.k}"
    )
    print("|         n | index                              | build s  | mem MiB   | p50 ms   | p99 ms   | recall@50 |")
    print("|----------:|------------------------------------|---------:|----------:|---------:|---------:|----------:|")
    for n in [None] if args.index else args.n:
        run(n or 0, args)


if __name__ == "__main__":
    main()
