"""Collect the tiny-world recipe's results: bench JSONs + GRPO metrics -> a table on stdout and table.json.

python examples/tiny-world/table.py WORK
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODES = [  # bench file, what it is
    ("coarse", "coarse (tiny CLIP, faiss)"),
    ("score", "score (base VLM, Yes/No)"),
    ("sft-icm", "reason, SFT, ICM tokens"),
    ("sft-full", "reason, SFT, full tokens"),
    ("grpo-icm", "reason, GRPO, ICM tokens"),
    ("grpo-full", "reason, GRPO, full tokens"),
]


def task0(result: dict) -> dict:
    row = next(r for r in result["metrics"]["rows"] if r["task_id"] == 0)
    return {"queries": row["queries"], **{k: 100 * v for k, v in row["recall"].items()}}


def grpo_curve(path: Path, parts: int = 3) -> list[dict]:
    """Mean inspections / accuracy / λ over consecutive thirds of GRPO training."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i in range(parts):
        chunk = rows[i * len(rows) // parts : (i + 1) * len(rows) // parts]
        if chunk:
            mean = lambda k: sum(r.get(k, 0.0) for r in chunk) / len(chunk)  # noqa: E731, B023
            out.append(
                {
                    "steps": f"{chunk[0]['step']}-{chunk[-1]['step']}",
                    "lambda": mean("lambda"),
                    "inspections": mean("inspections"),
                    "accuracy": mean("accuracy"),
                    "reward": mean("reward"),
                }
            )
    return out


def main(work: Path) -> None:
    rows = []
    for name, label in MODES:
        path = work / "bench" / f"{name}.json"
        if not path.is_file():
            rows.append({"mode": name, "label": label, "ran": False})
            continue
        result = json.loads(path.read_text())
        cost = result["cost"]
        rows.append(
            {
                "mode": name,
                "label": label,
                "ran": True,
                **task0(result),
                "prompt_tokens": cost["prompt_tokens_mean"],
                "inspections": cost["inspections_mean"],
                "generated_tokens": cost["generated_tokens_mean"],
                "fallbacks": cost["fallbacks"],
                "forced_answers": cost.get("forced_answers", 0),  # absent from benches before --force-answer
                "rerank_ms_p50": cost["latency_ms"].get("rerank", {}).get("p50"),
            }
        )
    by = {r["mode"]: r for r in rows if r["ran"]}
    times = {}
    seconds_file = work / "stage-seconds.txt"
    if seconds_file.is_file():
        for line in seconds_file.read_text().splitlines():
            name, _, secs = line.rpartition(" ")
            times[name] = int(secs)
    curve = grpo_curve(work / "grpo" / "metrics.jsonl")

    goals = {}
    if "coarse" in by:
        best = max((by[m]["R@1"] for m in ("sft-icm", "grpo-icm") if m in by), default=None)
        if best is not None:
            goals["reason R@1 >= coarse R@1 + 20"] = best >= by["coarse"]["R@1"] + 20
    for stage in ("sft", "grpo"):
        icm, full = by.get(f"{stage}-icm"), by.get(f"{stage}-full")
        if icm and full:
            goals[f"{stage}: ICM within 2 points of full tokens"] = icm["R@1"] >= full["R@1"] - 2
            goals[f"{stage}: ICM >= 10x fewer prompt tokens"] = full["prompt_tokens"] >= 10 * icm["prompt_tokens"]
    if "sft-icm" in by and "grpo-icm" in by:
        goals["GRPO >= SFT (R@1, ICM)"] = by["grpo-icm"]["R@1"] >= by["sft-icm"]["R@1"]
    if len(curve) == 3:
        ins = [c["inspections"] for c in curve]
        goals["GRPO inspections rise then fall as lambda grows"] = ins[1] > ins[0] and ins[2] < ins[1]

    print(
        f"{'mode':<28}{'R@1':>7}{'R@5':>7}{'prompt tok':>12}{'inspections':>13}{'gen tok':>9}{'forced':>8}{'fallback':>10}"
    )
    for r in rows:
        if not r["ran"]:
            print(f"{r['label']:<28}  (not run)")
            continue
        print(
            f"{r['label']:<28}{r['R@1']:>7.1f}{r['R@5']:>7.1f}{r['prompt_tokens']:>12.0f}"
            f"{r['inspections']:>13.2f}{r['generated_tokens']:>9.0f}{r['forced_answers']:>8}{r['fallbacks']:>10}"
        )
    if curve:
        print(
            "\nGRPO over training: "
            + "; ".join(
                f"steps {c['steps']}: lambda {c['lambda']:.2f}, inspections {c['inspections']:.2f}, accuracy {c['accuracy']:.2f}"
                for c in curve
            )
        )
    if times:
        stages = {k: v for k, v in times.items() if k != "wall"}
        wall = f"; wall {times['wall']} (two lanes side by side)" if "wall" in times else ""
        print(
            "\nseconds per stage: "
            + ", ".join(f"{k} {v}" for k, v in stages.items())
            + f"; sum {sum(stages.values())}{wall}"
        )
    for goal, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}")
    table = {
        "schema": "retrv.train.random_models-world/1",
        "task": 0,
        "rows": rows,
        "grpo_curve": curve,
        "seconds": times,
        "goals": goals,
    }
    (work / "table.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "work"))
