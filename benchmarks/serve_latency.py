"""Benchmark 8: `retrv serve` on a 10k-item index: warm HTTP search latency, throughput, and the CLI through it.

    .venv/bin/python benchmarks/serve_latency.py [--n 10000] [--requests 200] [--clients 8] [--repeats 5]

The index holds `n` random unit vectors under the `text:` encoder (MiniLM, 384-d), written through
`Store.upsert` as benchmark 4 does, so every query is really encoded by the model and searched (flat faiss,
exact). `retrv serve` runs as its own process. Measured in one run:
- warm coarse search over HTTP, one client on a kept-alive connection: p50/p95 of `GET /api/search` (k=10);
- throughput with `--clients` concurrent clients, each on its own connection, and their p50/p95;
- `retrv search QUERY --server URL -f` as a fresh process (wall time), against a cold `retrv search QUERY
  --index DIR -f`: what a one-off search costs with and without a warm server; `retrv --help` beside them is
  the floor of any `retrv` process (Python, Typer and the command modules).
The load average (`os.getloadavg`) is printed before and after: the figures depend on what else runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from cli_startup import RETRV, build_random_index, wall  # a sibling script: `python benchmarks/serve_latency.py`

WORDS = ["a red car", "a cup of coffee", "a dog in the snow", "a rocket launch", "a mountain lake", "a city at night"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed_searches(host: str, port: int, count: int, offset: int, engine_ms: list[float] | None = None) -> list[float]:
    """`count` searches on one kept-alive connection; seconds each (and the engine's own `latency_ms.total`)."""
    connection = http.client.HTTPConnection(host, port, timeout=120)
    times = []
    for i in range(count):
        query = urllib.parse.urlencode({"q": f"{WORDS[(offset + i) % len(WORDS)]} {offset + i}", "k": 10})
        started = time.perf_counter()
        connection.request("GET", f"/api/search?{query}")
        response = connection.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"search failed: HTTP {response.status} {body[:200]!r}")
        if engine_ms is not None:
            engine_ms.append(json.loads(body)["latency_ms"]["total"])
    connection.close()
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="searches by the single client")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="CLI runs of each kind")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RUST_LOG": "error"}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "index"
        started = time.perf_counter()
        build_random_index(root, args.n)
        from retrv.index.index import Index

        Index.open(root).ann()  # the faiss cache, as build-index leaves it
        print(f"built a {args.n}-item index in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        server = subprocess.Popen(
            [*RETRV, "serve", "--index", str(root), "--port", "0", "-q"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = server.stdout.readline().strip() if server.stdout else ""
            if not url:
                raise SystemExit(f"retrv serve did not start:\n{server.stderr.read() if server.stderr else ''}")
            print(f"retrv serve ready in {time.perf_counter() - started:.1f} s at {url}")
            host, port = urllib.parse.urlsplit(url).hostname or "", urllib.parse.urlsplit(url).port or 0

            timed_searches(host, port, 10, 0)  # warm-up: first requests, thread pool
            engine_ms: list[float] = []
            one = timed_searches(host, port, args.requests, 100, engine_ms)
            p50, p95 = statistics.median(one), percentile(one, 95)
            print(
                f"one client: p50 {ms(p50)}, p95 {ms(p95)}, {len(one) / sum(one):.1f} searches/s ({len(one)} searches); "
                f"the engine's own latency_ms.total: p50 {statistics.median(engine_ms):.1f} ms"
            )

            per_client = max(1, args.requests // args.clients)
            results: list[list[float]] = [[] for _ in range(args.clients)]

            def client(i: int) -> None:
                results[i] = timed_searches(host, port, per_client, 10_000 * (i + 1))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            together = [t for r in results for t in r]
            print(
                f"{args.clients} clients: {len(together) / elapsed:.1f} searches/s, "
                f"p50 {ms(statistics.median(together))}, p95 {ms(percentile(together, 95))} ({len(together)} searches)"
            )
            connection = http.client.HTTPConnection(host, port, timeout=60)
            connection.request("GET", "/api/info")
            stats = json.loads(connection.getresponse().read())["encoders"]
            print(f"encoder batches: {stats}")

            query = "a photo of a red car"
            helps = [wall([*RETRV, "--help"], env) for _ in range(args.repeats)]
            print(f"retrv --help:          median {statistics.median(helps):.3f} s, min {min(helps):.3f} s")
            through = [wall([*RETRV, "search", query, "--server", url, "-f"], env) for _ in range(args.repeats)]
            cold = [wall([*RETRV, "search", query, "--index", str(root), "-f"], env) for _ in range(args.repeats)]
            print(f"retrv search --server: median {statistics.median(through):.3f} s, min {min(through):.3f} s")
            print(f"retrv search (cold):   median {statistics.median(cold):.3f} s, min {min(cold):.3f} s")
            print(f"cold CLI search / warm HTTP p50: {statistics.median(cold) / p50:.0f}x")
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
