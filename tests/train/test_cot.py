"""Teacher CoT synthesis: four steps, inspection tags, only right answers kept, readable by SFT."""

from __future__ import annotations

import json

import pytest

from retrv.data.synth import SynthConfig, generate
from retrv.rerank.grammar import inspection_requests, is_well_formed
from retrv.train.cot import CotConfig, synthesize, train_cot, write_cot
from retrv.train.samples import load_cot_samples, load_reasoning_samples


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cot") / "w", SynthConfig(seed=5, size=1))


def _oracle(sample):
    """Scores with the positive on top, the next two candidates close behind, the rest low."""
    k = sample.num_candidates
    return [0.9 if i == sample.answer else 0.6 if (i - sample.answer) % k in (1, 2) else 0.1 for i in range(k)]


def test_a_cot_has_four_steps_inspects_the_hard_candidates_and_answers(world):
    sample = load_reasoning_samples(world, num_candidates=6)[0]
    record = write_cot(sample, _oracle(sample), hard_candidates=3)
    cot = record["cot"]
    assert [line.split(":")[0] for line in cot.splitlines()] == [
        "Step 1 (ideal result)",
        "Step 2 (quick elimination)",
        "Step 3 (detailed check)",
        "Step 4 (answer)",
    ]
    assert is_well_formed(cot, 6) and record["answer"] == sample.answer + 1
    hard = sorted({sample.answer, (sample.answer + 1) % 6, (sample.answer + 2) % 6})
    easy = [i for i in range(6) if i not in hard]
    assert all(f"{i + 1} (" in cot.splitlines()[1] for i in easy)  # ruled out at a glance, with a gist
    # hard candidates are opened in prompt order, stopping at the answer
    expected = [i + 1 for i in hard[: hard.index(sample.answer) + 1]]
    assert record["inspected"] == expected == [p.index + 1 for p in inspection_requests(cot, 6)]
    assert record["candidates"] == [c.id for c in sample.candidates] and record["qid"] == sample.qid


def test_only_right_answers_are_written_and_sft_reads_them(world, tmp_path):
    samples = load_reasoning_samples(world, num_candidates=4)
    wrong = {s.qid for s in samples[::3]}

    def judge(sample):
        scores = _oracle(sample)
        if sample.qid in wrong:  # the teacher prefers a negative
            scores[(sample.answer + 1) % sample.num_candidates] = 0.95
        return scores

    out = tmp_path / "cot.jsonl"
    summary = synthesize(samples, judge, out)
    assert summary.queries == len(samples) == 12 and summary.wrong == len(wrong) == 4 and summary.written == 8
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["qid"] for r in records] == [s.qid for s in samples if s.qid not in wrong]
    back = load_cot_samples(world, out)
    assert [(s.qid, [c.id for c in s.candidates], s.answer) for s in back] == [
        (s.qid, [c.id for c in s.candidates], s.answer) for s in samples if s.qid not in wrong
    ]


def test_train_cot_with_a_tiny_teacher_in_score_mode(world, tmp_path, tiny_reasoner_dir):
    out = tmp_path / "teacher.jsonl"
    summary = train_cot(
        CotConfig(
            data=str(world),
            teacher=str(tiny_reasoner_dir),
            out=str(out),
            num_candidates=2,
            hard_candidates=1,
            device="cpu",
        )
    )
    assert summary.queries == 12 and summary.written + summary.wrong == 12 and summary.written > 0
    samples = {s.qid: s for s in load_reasoning_samples(world, num_candidates=2)}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        best = max(range(2), key=lambda i: (record["teacher_scores"][i], -i))
        assert record["answer"] == best + 1 == samples[record["qid"]].answer + 1  # the teacher's pick, and right
    assert len(load_cot_samples(world, out)) == summary.written
