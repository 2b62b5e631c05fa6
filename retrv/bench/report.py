"""Presenting a bench result: rows for a table, and a PNG of per-task recall and cost (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrv.bench.run import BenchResult


def table_rows(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: task, dataset, queries, R@1, R@5, R@10, headline; then the average."""
    header = ["task", "dataset", "queries", "R@1", "R@5", "R@10", "headline"]
    rows = []
    for r in result.metrics.rows:
        recall = [f"{100 * r.recall.get(k, 0.0):.1f}" for k in (1, 5, 10)]
        rows.append([str(r.task_id), r.dataset, str(r.queries), *recall, f"R@{r.headline_k} {100 * r.headline:.1f}"])
    rows.append(
        [
            "",
            "average",
            str(sum(r.queries for r in result.metrics.rows)),
            "",
            "",
            "",
            f"{100 * result.metrics.average:.1f}",
        ]
    )
    return header, rows


def cost_rows(result: BenchResult) -> list[tuple[str, str]]:
    cost = result.cost
    rows = [
        (f"latency {stage}", f"p50 {v['p50']:.1f} ms · p95 {v['p95']:.1f} ms")
        for stage, v in cost["latency_ms"].items()
    ]
    rows += [
        ("prompt tokens / query", f"{cost['prompt_tokens_mean']:.1f}"),
        ("generated tokens / query", f"{cost['generated_tokens_mean']:.1f}"),
        ("inspections / query", f"{cost['inspections_mean']:.2f}"),
        ("reranker fallbacks", str(cost["fallbacks"])),
        ("forced answers", str(cost["forced_answers"])),
        ("peak RSS", f"{cost['peak_rss_bytes'] / 2**20:.0f} MiB"),
    ]
    if "peak_cuda_bytes" in cost:
        rows.append(("peak CUDA memory", f"{cost['peak_cuda_bytes'] / 2**20:.0f} MiB"))
    return rows


def require_matplotlib() -> None:
    """UsageError unless matplotlib can be imported (`--plot` checks this before a long run)."""
    from retrv.errors import UsageError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'retrv[plot]'") from None


def plot(result: BenchResult, path: str | Path) -> Path:
    """Per-task headline recall (left) and p50/p95 latency per stage (right), as a PNG."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{r.dataset}\n(R@{r.headline_k})" for r in result.metrics.rows]
    left.bar(names, [100 * r.headline for r in result.metrics.rows], color="#4c72b0")
    left.axhline(
        100 * result.metrics.average,
        color="#c44e52",
        linestyle="--",
        label=f"average {100 * result.metrics.average:.1f}",
    )
    left.set_ylabel("recall (%)")
    left.set_ylim(0, 100)
    left.legend()
    left.tick_params(axis="x", labelsize=7)
    stages = list(result.cost["latency_ms"])
    p50 = [result.cost["latency_ms"][s]["p50"] for s in stages]
    p95 = [result.cost["latency_ms"][s]["p95"] for s in stages]
    x = range(len(stages))
    right.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    right.bar([i + 0.2 for i in x], p95, width=0.4, label="p95")
    right.set_xticks(list(x), stages, rotation=30, ha="right", fontsize=7)
    right.set_ylabel("ms per query")
    right.legend()
    fig.suptitle(f"retrv bench · rerank {result.config.get('rerank')} · {result.config.get('encoder')}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
