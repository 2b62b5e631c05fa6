"""`retrv train cot`: a teacher VLM writes 4-step chain-of-thought for training queries of a real dataset.

The synthetic world ships its true CoT; this command makes the same file for any M-BEIR-layout dataset.
For each training query (K candidates: its positive, hard negatives, random pool members; `train.samples`)
the teacher judges every candidate in score mode (`rerank.scorer.Scorer`: P("Yes") of one forward pass per
pair, any instruct VLM). The teacher's ranking then writes the four steps:

    Step 1 (ideal result):      what the query asks for (its instruction and text, or "the query image")
    Step 2 (quick elimination): every candidate outside the teacher's top `--hard-candidates`, ruled out
    Step 3 (detailed check):    the hard candidates in prompt order, each opened with
                                `<inspection-index-start>i<inspection-index-end>`, stopping at the chosen one
    Step 4 (answer):            `<answer>i</answer>`, the teacher's best candidate

Only samples whose answer is right (the teacher's best is the positive) are written. The output is the
synth world's CoT format, one JSON object per line (`retrv train sft --cot` reads both):
{qid, task_id, dataset, candidates (dids, 1-indexed in the text), cot, answer (1-based), inspected (1-based),
teacher_scores}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from retrv.errors import DataError, RetrvError, TrainConfigError
from retrv.progress import ProgressCallback, emit
from retrv.train.config import help_text
from retrv.train.loop import DataIssue, DataIssues

if TYPE_CHECKING:
    from retrv.items import Item, Query
    from retrv.train.samples import ReasoningSample

Judge = Callable[["ReasoningSample"], "list[float | None]"]  # a score per candidate (None: could not judge it)
INSPECT = "<inspection-index-start>{i}<inspection-index-end>"


@dataclass
class CotConfig:
    """`retrv train cot`: teacher-written chain-of-thought for a dataset's training queries."""

    data: str | None = field(default=None, metadata=help_text("M-BEIR-layout dataset root.", required=True))
    teacher: str | None = field(
        default=None,
        metadata=help_text(
            "Teacher VLM (HF id or directory), any instruct model: it judges each candidate in score mode.",
            required=True,
        ),
    )
    out: str | None = field(
        default=None, metadata=help_text("Output jsonl file (the synth world's CoT format).", required=True)
    )
    split: str = field(default="train", metadata=help_text("Which query split to write CoT for."))
    pool: str = field(
        default="local", metadata=help_text("Candidate pool that resolves candidate ids: local or global.")
    )
    num_candidates: int = field(
        default=8, metadata=help_text("Candidates per query (K): positive, hard negatives, random.")
    )
    hard_candidates: int = field(
        default=3,
        metadata=help_text(
            "Candidates the teacher ranks highest: checked in detail (inspected); the rest are ruled out in step 2."
        ),
    )
    instructions: bool = field(default=True, metadata=help_text("Give each query its dataset's instruction."))
    limit: int = field(default=0, metadata=help_text("Use at most this many queries (0: all)."))
    batch_size: int = field(default=8, metadata=help_text("Teacher forward passes per batch."))
    seed: int = field(default=0, metadata=help_text("Seed of the random candidates and their order."))
    device: str = field(default="auto", metadata=help_text("auto, cpu, cuda or mps."))

    def validate(self) -> None:
        for name in ("data", "teacher", "out"):
            if not getattr(self, name):
                raise TrainConfigError(f"--{name} is required")
        if self.num_candidates < 2:
            raise TrainConfigError(f"--num-candidates must be at least 2, got {self.num_candidates}")
        if self.hard_candidates < 1:
            raise TrainConfigError(f"--hard-candidates must be at least 1, got {self.hard_candidates}")


@dataclass
class CotSummary:
    out: Path
    queries: int  # samples the teacher judged
    written: int  # right answers, written
    wrong: int  # teacher's best was not the positive: dropped
    data_issues: list[DataIssue] = field(default_factory=list)


def _quote(text: str, words: int = 12) -> str:
    parts = text.split()
    return '"' + " ".join(parts[:words]) + (" ..." if len(parts) > words else "") + '"'


def _gist(item: Item) -> str:
    if item.image_path and item.text:
        return f"an image with {_quote(item.text, 8)}"
    return "an image" if item.image_path else _quote(item.text or "", 8)


def ideal_result(query: Query) -> str:
    ask = f"{query.instruction.rstrip('.')}: " if query.instruction else ""
    if query.image and query.text:
        return f"{ask}a result for the query image as the text asks ({_quote(query.text)})"
    if query.image:
        return f"{ask}a result that matches the query image"
    return f"{ask}a result that matches {_quote(query.text or '')}"


def write_cot(sample: ReasoningSample, scores: list[float | None], hard_candidates: int = 3) -> dict:
    """The 4-step CoT record for the teacher's `scores` (its best candidate is the answer)."""
    k = sample.num_candidates
    value = [s if s is not None else float("-inf") for s in scores]
    ranked = sorted(range(k), key=lambda i: (-value[i], i))
    best, hard = ranked[0], sorted(ranked[:hard_candidates])
    easy = [i for i in range(k) if i not in hard]
    step2 = "No candidate can be ruled out at a glance."
    if easy:
        listed = ", ".join(f"{i + 1} ({_gist(sample.candidates[i])})" for i in easy)
        step2 = (
            f"Candidates {listed} do not match at a glance: ruled out."
            if len(easy) > 1
            else f"Candidate {listed} does not match at a glance: ruled out."
        )
    parts = (
        [f"Candidates {', '.join(str(i + 1) for i in hard)} are close; checking them in full."] if len(hard) > 1 else []
    )
    inspected = []
    for i in hard:
        inspected.append(i + 1)
        if i == best:
            parts.append(f"Candidate {i + 1} {INSPECT.format(i=i + 1)} matches the query best.")
            break
        parts.append(f"Candidate {i + 1} {INSPECT.format(i=i + 1)} is a weaker match.")
    cot = (
        f"Step 1 (ideal result): {ideal_result(sample.query)}.\nStep 2 (quick elimination): {step2}\n"
        f"Step 3 (detailed check): {' '.join(parts)}\nStep 4 (answer): <answer>{best + 1}</answer>"
    )
    return {
        "qid": sample.qid,
        "task_id": sample.task_id,
        "dataset": sample.dataset,
        "candidates": [c.id for c in sample.candidates],
        "cot": cot,
        "answer": best + 1,
        "inspected": inspected,
        "teacher_scores": [None if s is None else round(float(s), 6) for s in scores],
    }


def synthesize(
    samples: list[ReasoningSample],
    judge: Judge,
    out: str | Path,
    *,
    hard_candidates: int = 3,
    issues: DataIssues | None = None,
    progress: ProgressCallback | None = None,
) -> CotSummary:
    """Judge every sample, write the CoT of those the judge gets right to `out` (replaced atomically)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    written = wrong = 0
    with tmp.open("w", encoding="utf-8") as f:
        for n, sample in enumerate(samples, 1):
            try:
                scores = judge(sample)
            except RetrvError as e:  # e.g. an unreadable query image
                if issues is not None:
                    issues.report(sample.source, str(e))
                continue
            record = write_cot(sample, scores, hard_candidates)
            if record["answer"] - 1 == sample.answer:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
            else:
                wrong += 1
            emit(progress, "cot", n, len(samples), f"{written} kept, {wrong} wrong")
    os.replace(tmp, out)
    return CotSummary(out, written + wrong, written, wrong, list(issues.items) if issues is not None else [])


def scorer_judge(scorer: object) -> Judge:
    """A judge from a `rerank.scorer.Scorer`: P(yes) per candidate."""
    from retrv.rerank.base import Candidate

    def judge(sample: ReasoningSample) -> list[float | None]:
        p_yes, _, _ = scorer.score(sample.query, [Candidate(item, 0.0) for item in sample.candidates])  # type: ignore[attr-defined]
        return p_yes

    return judge


def train_cot(config: CotConfig, progress: ProgressCallback | None = None) -> CotSummary:
    """Load the teacher, build the samples, write the CoT file."""
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.scorer import Scorer
    from retrv.train.samples import load_reasoning_samples

    config.validate()
    issues = DataIssues(progress)
    samples = load_reasoning_samples(
        str(config.data),  # validated: given
        config.split,
        pool=config.pool,
        num_candidates=config.num_candidates,
        seed=config.seed,
        instructions=config.instructions,
        limit=config.limit,
        issues=issues,
    )
    teacher = Scorer(load_reasoner(config.teacher, device=config.device), batch_size=config.batch_size)
    summary = synthesize(
        samples,
        scorer_judge(teacher),
        str(config.out),  # validated: given
        hard_candidates=config.hard_candidates,
        issues=issues,
        progress=progress,
    )
    if summary.written == 0:
        raise DataError(
            f"the teacher answered none of the {summary.queries} queries right: nothing written to {config.out}"
        )
    return summary
