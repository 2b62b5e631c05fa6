"""Top-50 search: single-query latency (p50/p99) and recall@50 against exact search, flat vs HNSW (vs IVF).

    .venv/bin/python benchmarks/search_latency.py                       # 100k and 1M random 512-d unit vectors
    .venv/bin/python benchmarks/search_latency.py --n 100000 --ef 64 128 256 512 --data clustered
    .venv/bin/python benchmarks/search_latency.py --n 100000 --kinds hnsw ivf --nprobe 8 16 32
    .venv/bin/python benchmarks/search_latency.py --index /tmp/idx      # an index kept by add_vectors.py --keep

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

from retrv.index.ann import ANN_PARAMS, AnnIndex, AnnParams

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


def row(n: int, name: str, build_s: float | None, times: np.ndarray, rec: float) -> str:
    build = f"{build_s:8.1f}" if build_s is not None else "  cached"
    p50, p99 = np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3
    return f"| {n:>9,} | {name:<28} | {build} | {p50:8.2f} | {p99:8.2f} | {rec:9.3f} |"


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
    built = {kind: AnnIndex.new(kind, args.dim, params=params, n_hint=n) for kind in args.kinds} if not store else {}
    seconds = dict.fromkeys(["flat", *built], 0.0)
    for keys, vectors in chunks:
        for kind, ann in [("flat", flat), *built.items()]:
            start = time.perf_counter()
            if kind == "ivf" and not ann.index.is_trained:
                ann.train(vectors)  # i.i.d. chunks: the first one is a fair sample
            ann.add(keys, vectors)
            seconds[kind] += time.perf_counter() - start
    if store is not None:
        start = time.perf_counter()
        ann = AnnIndex.load_or_build(store, exact_max=args.exact_max)
        built, seconds[ann.kind] = {ann.kind: ann}, time.perf_counter() - start
        if ann.source != "cache":
            print(f"note: the index had no current ANN cache; it was built ({ann.kind}) in {seconds[ann.kind]:.1f} s")

    _, exact = flat.search(queries, args.k)  # batched: the ground truth
    flat_times, flat_found = latencies(flat, queries[: args.flat_queries], args.k)
    print(row(n, "flat (exact)", seconds["flat"], flat_times, recall(flat_found, exact[: args.flat_queries])))
    del flat
    for kind, ann in built.items():
        build_s = None if ann.source == "cache" else seconds[kind]
        for setting in args.ef if kind == "hnsw" else args.nprobe if kind == "ivf" else [0]:
            if kind == "hnsw":
                ann.params = replace(ann.params, ef_search=setting)
                name = f"hnsw M={ann.params.m} efC={ann.params.ef_construction} ef={setting}"
            elif kind == "ivf":
                ann.params = replace(ann.params, nprobe=setting)
                name = f"ivf nlist={ann.index.nlist} nprobe={setting}"
            else:
                name = kind
            times, found = latencies(ann, queries, args.k)
            print(row(n, name, build_s, times, recall(found, exact)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed for HNSW")
    parser.add_argument("--flat-queries", type=int, default=30, help="single queries timed for flat (slow at 1M)")
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    parser.add_argument(
        "--kinds", nargs="+", choices=["hnsw", "ivf"], default=["hnsw"], help="approximate indices to compare"
    )
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
    print("|         n | index                        | build s  | p50 ms   | p99 ms   | recall@50 |")
    print("|----------:|------------------------------|---------:|---------:|---------:|----------:|")
    for n in [None] if args.index else args.n:
        run(n or 0, args)


if __name__ == "__main__":
    main()
