"""Benchmark 4: `retrv --help` wall time, and a cold `retrv search --no-rerank` on a 100k-item index.

    .venv/bin/python benchmarks/cli_startup.py [--n 100000] [--repeats 5]

The index holds `n` random unit vectors under the `text:` (MiniLM, 384-d) encoder, so the search
process really loads the encoder, opens LanceDB, loads (or first builds) the faiss cache and searches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RETRV = [str(Path(sys.executable).with_name("retrv"))]


def wall(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return elapsed


def build_random_index(root: Path, n: int) -> None:
    import numpy as np

    from retrv.encoders.registry import load_encoder
    from retrv.index.store import Store
    from retrv.items import Item

    encoder = load_encoder("text", device="cpu")
    store = Store.create(root, encoder_spec=encoder.spec, dim=encoder.dim)
    rng = np.random.default_rng(0)
    for start in range(0, n, 50_000):
        count = min(50_000, n - start)
        vectors = rng.standard_normal((count, encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [
            Item(id=f"doc{i}", source=f"/bench/doc{i}.txt", modality="text", text=f"document {i}")
            for i in range(start, start + count)
        ]
        store.upsert(items, vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RUST_LOG": "error"}

    helps = [wall([*RETRV, "--help"], env) for _ in range(args.repeats)]
    print(f"retrv --help: median {statistics.median(helps):.3f} s, min {min(helps):.3f} s over {args.repeats} runs")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "index"
        started = time.perf_counter()
        build_random_index(root, args.n)
        print(f"built a {args.n}-item index in {time.perf_counter() - started:.1f} s")
        search = [*RETRV, "search", "a photo of a red car", "--index", str(root), "--no-rerank", "--k", "50", "-f"]
        first = wall(search, env)
        again = [wall(search, env) for _ in range(args.repeats)]
        print(f"cold search, first run (builds the faiss cache): {first:.2f} s")
        print(f"cold search, cache present: median {statistics.median(again):.2f} s, min {min(again):.2f} s")


if __name__ == "__main__":
    main()
