"""`retrv bench mbeir` end to end on a tiny synthetic world: recall as its own run file gives it, resume, plot, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrv.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from retrv.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("bench-world") / "world", SynthConfig(seed=11, size=3, cot_variants=1))


def bench(world: Path, clip: Path, index_dir: Path, *extra: str) -> dict:
    result = runner.invoke(
        app,
        [
            "bench",
            "mbeir",
            str(world),
            "--encoder",
            f"clip:{clip}",
            "--index-dir",
            str(index_dir),
            "--device",
            "cpu",
            "--no-instructions",
            "--json",
            "-q",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_recall_is_what_the_run_file_says_and_an_interrupted_bench_resumes(world, tiny_clip_dir, tmp_path):
    from retrv.bench.metrics import read_run, run_rankings
    from retrv.data.mbeir import MBeirDataset

    run, png = tmp_path / "run.trec", tmp_path / "recall.png"
    data = bench(
        world, tiny_clip_dir, tmp_path / "indexes", "--tasks", "0,3", "--k", "10", "--run", str(run), "--plot", str(png)
    )
    assert data["schema"] == "retrv.bench/1"
    rows = {row["dataset"]: row for row in data["metrics"]["rows"]}
    assert set(rows) == {"synth_task0", "synth_task3"} and {row["queries"] for row in rows.values()} == {3}
    rankings = run_rankings(read_run(run))
    queries = [q for q in MBeirDataset.open(world, "test").queries() if q.dataset in rows]
    assert sorted(rankings) == sorted(q.qid for q in queries) and {len(r) for r in rankings.values()} == {10}
    for name, row in rows.items():  # recall by hand: a query counts when any positive is in its top k
        mine = [q for q in queries if q.dataset == name]
        for k in (1, 5, 10):
            found = sum(any(did in q.pos for did in rankings[q.qid][:k]) for q in mine)
            assert row["recall"][f"R@{k}"] == pytest.approx(found / len(mine))
    assert data["cost"]["queries"] == 6 and data["cost"]["fallbacks"] == 0 and data["cost"]["fallback_reasons"] == {}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lines = run.read_text().splitlines()  # as if stopped after the first query
    run.write_text("".join(line + "\n" for line in lines if line.split()[0] == lines[0].split()[0]))
    again = bench(world, tiny_clip_dir, tmp_path / "indexes", "--tasks", "0,3", "--k", "10", "--run", str(run))
    assert (again["queries_resumed"], again["queries_run"]) == (1, 5)
    assert again["metrics"]["rows"] == data["metrics"]["rows"]
    assert run_rankings(read_run(run)) == rankings


def test_a_reason_bench_counts_why_the_coarse_order_stood(world, tiny_clip_dir, reasoner_checkpoint, tmp_path):
    coarse = bench(world, tiny_clip_dir, tmp_path / "indexes", "--tasks", "0", "--k", "8")
    capped = bench(
        world,
        tiny_clip_dir,
        tmp_path / "indexes",
        "--tasks",
        "0",
        "--k",
        "8",
        "--rerank",
        "reason",
        "--reasoner",
        str(reasoner_checkpoint),
        "--rerank-k",
        "4",
        "--max-new-tokens",
        "2",
    )
    cost = capped["cost"]
    assert cost["fallbacks"] == 3 and sum(cost["fallback_reasons"].values()) == 3 and cost["forced_answers"] == 0
    assert all(reason.startswith("max_new_tokens (2) reached") for reason in cost["fallback_reasons"])
    assert 0 < cost["generated_tokens_mean"] <= 2 and cost["prompt_tokens_mean"] > 0
    assert capped["metrics"]["rows"] == coarse["metrics"]["rows"]  # every query fell back: the coarse order stands

    forced = bench(
        world,
        tiny_clip_dir,
        tmp_path / "indexes",
        "--tasks",
        "0",
        "--k",
        "8",
        "--rerank",
        "reason",
        "--reasoner",
        str(reasoner_checkpoint),
        "--rerank-k",
        "4",
        "--max-new-tokens",
        "2",
        "--force-answer",
    )
    cost = forced["cost"]  # each of the 3 is made to name one of its 4 candidates: one more token
    assert cost["forced_answers"] == 3 and cost["fallbacks"] == 0 and cost["generated_tokens_mean"] == 3
