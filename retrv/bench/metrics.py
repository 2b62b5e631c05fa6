"""Recall@k as UniIR computes it on M-BEIR, per-task tables, and TREC run files.

Recall@k (UniIR's `compute_recall_at_k`, the CLIP/BLIP convention): 1 when *any* positive is in the top k,
else 0, averaged over queries. A query with no positive left counts as 0, as in UniIR.
Positives are filtered to the query's dataset id ("9:12" -> 9), as UniIR's eval does (`MBEIRMainDataset` in
eval mode keeps only `pos_cand_list` dids whose prefix equals the qid's; it matters for OVEN and INFOSEEK).
The headline metric of a (dataset, task) row is R@5, except R@10 for Fashion200K (id 1) and FashionIQ (id 7);
the M-BEIR average is the plain mean of the rows' headline values. Values are fractions in [0, 1].

Ties: a ranking is used in the order given (the engine's, or a run file's rank column). Where only scores are
known, `rank_by_score` orders by score descending, then did ascending, so equal scores always give the same
order whatever order they arrived in. A run file ranks by its rank column; equal ranks fall back to that rule.

Run files are TREC runs, one line per hit: `qid Q0 did rank score run_name` (UniIR's optional 7th column,
task_id, is accepted on reading). `RunWriter` writes each query's lines in one write and flushes, so an
interrupted bench leaves complete queries plus at most one torn query at the end; `read_run(repair=True)`
drops that torn query (and truncates the file to match) so a bench can resume from the qids already there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import DataError

if TYPE_CHECKING:
    from retrv.data.mbeir import MBeirQuery

KS: tuple[int, ...] = (1, 5, 10)
R10_DATASET_IDS = frozenset({1, 7})  # Fashion200K, FashionIQ: UniIR reports Recall@10 for them


def headline_k(dataset_id: int) -> int:
    return 10 if dataset_id in R10_DATASET_IDS else 5


def filter_positives(qid: str, positives: Iterable[str]) -> list[str]:
    """The positives UniIR's eval counts: those whose dataset id is the query's."""
    prefix = qid.split(":", 1)[0]
    return [did for did in positives if did.split(":", 1)[0] == prefix]


def recall_at_k(ranked: Sequence[str], positives: Iterable[str], k: int) -> float:
    positives = set(positives)
    return 1.0 if positives and positives.intersection(ranked[:k]) else 0.0


def rank_by_score(scores: Mapping[str, float] | Iterable[tuple[str, float]]) -> list[str]:
    """dids ordered by score descending, ties by did ascending."""
    pairs = scores.items() if isinstance(scores, Mapping) else scores
    return [did for did, _ in sorted(pairs, key=lambda p: (-float(p[1]), p[0]))]


@dataclass
class TaskRow:
    """One (task, dataset) row of the M-BEIR table. `missing`: queries given with no ranking (counted as misses)."""

    task_id: int
    dataset: str
    dataset_id: int
    queries: int = 0
    missing: int = 0
    recall: dict[int, float] = field(default_factory=dict)

    @property
    def headline_k(self) -> int:
        return headline_k(self.dataset_id)

    @property
    def headline(self) -> float:
        return self.recall[self.headline_k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "dataset": self.dataset,
            "dataset_id": self.dataset_id,
            "queries": self.queries,
            "missing": self.missing,
            "recall": {f"R@{k}": v for k, v in sorted(self.recall.items())},
            "headline_metric": f"R@{self.headline_k}",
            "headline": self.headline,
        }


@dataclass
class MetricsReport:
    rows: list[TaskRow]

    @property
    def average(self) -> float:
        """Mean headline over rows (the M-BEIR local average when the rows are its 16 test sets)."""
        return sum(r.headline for r in self.rows) / len(self.rows) if self.rows else 0.0

    @property
    def task_averages(self) -> dict[int, float]:
        by_task: dict[int, list[float]] = {}
        for r in self.rows:
            by_task.setdefault(r.task_id, []).append(r.headline)
        return {t: sum(v) / len(v) for t, v in sorted(by_task.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "average": self.average,
            "task_averages": {str(t): v for t, v in self.task_averages.items()},
        }


def evaluate(
    rankings: Mapping[str, Sequence[str]], queries: Iterable[MBeirQuery], ks: Sequence[int] = KS
) -> MetricsReport:
    """Recall@k per (task, dataset) over `queries`; `rankings` maps qid -> dids best first.

    The headline k is always computed, whatever `ks` says. A query's task is its task_id (0 when unknown).
    """
    from retrv.data.mbeir import MBEIR_TEST_SETS

    rows: dict[tuple[int, str], TaskRow] = {}
    hits: dict[tuple[int, str], dict[int, float]] = {}
    for q in queries:
        key = (q.task_id or 0, q.dataset)
        row = rows.setdefault(key, TaskRow(key[0], q.dataset, q.dataset_id))
        wanted = sorted(set(ks) | {row.headline_k})
        sums = hits.setdefault(key, dict.fromkeys(wanted, 0.0))
        row.queries += 1
        ranked = rankings.get(q.qid)
        if ranked is None:
            row.missing += 1
            continue
        positives = filter_positives(q.qid, q.pos)
        for k in wanted:
            sums[k] += recall_at_k(ranked, positives, k)
    for key, row in rows.items():
        row.recall = {k: v / row.queries for k, v in hits[key].items()}
    order = {name: i for i, name in enumerate(MBEIR_TEST_SETS)}
    return MetricsReport(sorted(rows.values(), key=lambda r: (r.task_id, order.get(r.dataset, len(order)), r.dataset)))


# ---------------------------------------------------------------------------------------------------- run files


@dataclass(frozen=True)
class RunEntry:
    qid: str
    did: str
    rank: int
    score: float
    run_name: str


def format_run(qid: str, ranked: Sequence[tuple[str, float]], run_name: str) -> str:
    """The TREC lines of one query; ranks start at 1 in the order given."""
    for token in (qid, run_name, *(did for did, _ in ranked)):
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"run file fields cannot be empty or contain spaces: {token!r}")
    return "".join(
        f"{qid} Q0 {did} {rank} {float(score)!r} {run_name}\n" for rank, (did, score) in enumerate(ranked, 1)
    )


class RunWriter:
    """Appends queries to a run file, one write + flush per query."""

    def __init__(self, path: str | Path, run_name: str, append: bool = True):
        self.path, self.run_name = Path(path), run_name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w", encoding="utf-8", newline="\n")

    def write(self, qid: str, ranked: Sequence[tuple[str, float]]) -> None:
        self._file.write(format_run(qid, ranked, self.run_name))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_run(path: str | Path, rankings: Mapping[str, Sequence[tuple[str, float]]], run_name: str) -> None:
    with RunWriter(path, run_name, append=False) as w:
        for qid, ranked in rankings.items():
            w.write(qid, ranked)


def read_run(path: str | Path, repair: bool = False) -> dict[str, list[RunEntry]]:
    """qid -> entries best first (by rank; equal ranks by score descending, then did).

    A last line without its newline is a torn write: that query is dropped (and with `repair` the file is
    truncated to the end of the previous query). Any other malformed line raises DataError with file:line.
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    lines = data.decode("utf-8").split("\n")
    torn = lines.pop() != ""  # text after the last newline
    entries: dict[str, list[RunEntry]] = {}
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) not in (6, 7) or parts[1] != "Q0":
                raise ValueError
            entry = RunEntry(parts[0], parts[2], int(parts[3]), float(parts[4]), parts[5])
        except ValueError:
            raise DataError(
                f"{path}:{n}: a run line is 'qid Q0 did rank score run_name', got {line.strip()!r}"
            ) from None
        if (entry.qid, entry.did) in seen:
            raise DataError(f"{path}:{n}: {entry.did} appears twice for query {entry.qid}")
        seen.add((entry.qid, entry.did))
        entries.setdefault(entry.qid, []).append(entry)
    if torn:
        last = data.rfind(b"\n") + 1
        tail = data[last:].split()
        drop = tail[0].decode("utf-8") if tail else ""
        entries.pop(drop, None)
        if repair:
            keep = [ln + b"\n" for ln in data[:last].split(b"\n")[:-1] if (ln.split() or [b""])[0].decode() != drop]
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(b"".join(keep))
            os.replace(tmp, path)
    return {q: sorted(es, key=lambda e: (e.rank, -e.score, e.did)) for q, es in entries.items()}


def run_rankings(run: Mapping[str, Sequence[RunEntry]]) -> dict[str, list[str]]:
    """qid -> dids best first, ready for `evaluate`."""
    return {qid: [e.did for e in es] for qid, es in run.items()}
