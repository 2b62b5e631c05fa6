"""Reasoning samples: a query and K candidates from an M-BEIR-layout dataset, as every reasoner stage reads them.

A `ReasoningSample` is what the reasoner sees at search time: a `Query` (with the dataset's instruction, as
`retrv bench` builds it) and K candidate `Item`s in prompt order ([1]..[K]), plus the 0-based index of the
positive. Two sources:

- `load_reasoning_samples(root, ...)`: each training query with its positive, its hard negatives
  (`neg_cand_list`, in file order) and random members of its pool, K in all, shuffled with a seed per qid
  (ICM alignment, teacher CoT synthesis, GRPO); or, given a coarse retriever (`index=`, an `Index`), the
  query's coarse top-K in coarse order with their scores: the distribution the reasoner sees at search time
  (GRPO `--index`, whose hard-sample filter needs the coarse order).
- `load_cot_samples(root, cot_file, ...)`: the records of a CoT file (`retrv data synth` writes
  `cot/train_cot.jsonl`, `retrv train cot` writes the same format), candidates as the record lists them (SFT).

Bad data is reported through `DataIssues` with file and line and skipped: malformed lines, a missing image,
a positive that is not in the pool (or not in the coarse top-K), a CoT whose answer or inspection index is
outside 1..K.

The tensor side (`sample_tokens`, `soft_tokens`, `reasoning_prompt`) builds the prompt with the code inference
uses (`icm.features`, `rerank.sequence.build_prompt`, `rerank.decode.text_stack`), with gradients through the ICM.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import DataError
from retrv.train.loop import DataIssues

if TYPE_CHECKING:
    import torch

    from retrv.data.mbeir import MBeirCandidate, MBeirDataset, MBeirQuery
    from retrv.icm.features import CandidateTokens, TokenBudget
    from retrv.icm.module import ICM
    from retrv.index.index import Index
    from retrv.items import Item, Query
    from retrv.rerank.sequence import Segment, SpecialTokens


@dataclass(frozen=True)
class ReasoningSample:
    qid: str
    query: Query
    candidates: tuple[Item, ...]  # prompt order: candidate i of the text is candidates[i - 1]
    answer: int  # 0-based index of the positive
    source: str  # "file:line" of the query (or of the CoT record)
    task_id: int | None = None
    dataset: str = ""
    cot: str | None = None  # the reasoning text, for SFT
    inspected: tuple[int, ...] = ()  # 0-based, as the CoT record lists them
    coarse_scores: tuple[float, ...] = ()  # one per candidate when a coarse retriever chose them (best first)

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)


@dataclass
class _Split:
    """One split read once: queries by qid (with their file:line) and each dataset's pool by did."""

    ds: MBeirDataset
    queries: dict[str, tuple[MBeirQuery, str]] = field(default_factory=dict)
    pools: dict[str, dict[str, MBeirCandidate]] = field(default_factory=dict)  # dataset -> did -> candidate


def _read_split(root: str | Path, split: str, pool: str, issues: DataIssues) -> _Split:
    from retrv.data.mbeir import MBeirDataset, parse_candidate, parse_query, parsed_lines

    ds = MBeirDataset.open(root, split)
    out = _Split(ds)
    by_file: dict[Path, dict[str, MBeirCandidate]] = {}
    for dataset in ds.datasets:
        parse = partial(parse_query, root=ds.root, dataset=dataset, split=split)
        for where, q in parsed_lines(ds.query_file(dataset), ds.root, parse, issues.report):
            out.queries.setdefault(q.qid, (q, where))
        path = ds.pool_file(None if pool == "global" else dataset, pool)
        if path not in by_file:
            found: dict[str, MBeirCandidate] = {}
            parse_pool = partial(parse_candidate, root=ds.root, dataset=dataset)
            for _, c in parsed_lines(path, ds.root, parse_pool, issues.report):
                found.setdefault(c.did, c)
            by_file[path] = found
        out.pools[dataset] = by_file[path]
    return out


def _query_of(split: _Split, q: MBeirQuery, positive: MBeirCandidate, instructions: bool) -> Query:
    instruction = None
    if instructions:
        try:
            instruction = split.ds.instruction(q.dataset, q.modality, positive.modality)
        except DataError:
            instruction = None  # no instructions file: the query goes without one, as in `bench --no-instructions`
    return q.to_query(instruction)


def _missing_image(query: MBeirQuery, candidates: Sequence[Item] = ()) -> str | None:
    for what, path in [
        (f"query {query.qid}", query.image_path),
        *((f"candidate {c.id}", c.image_path) for c in candidates),
    ]:
        if path is not None and not Path(path).is_file():
            return f"image not found: {path} ({what})"
    return None


def _seeded_candidates(q: MBeirQuery, cands: dict[str, MBeirCandidate], positive: str, k: int, seed: int) -> list[Item]:
    """The positive, its hard negatives (file order), random pool members: k in all, shuffled with a seed per qid."""
    rng = random.Random(f"retrv-samples:{seed}:{q.qid}")
    chosen = [positive] + [d for d in dict.fromkeys(q.neg) if d in cands and d not in q.pos][: k - 1]
    others = [d for d in cands if d not in chosen and d not in q.pos]
    chosen += rng.sample(others, min(k - len(chosen), len(others)))
    rng.shuffle(chosen)
    return [cands[d].to_item() for d in chosen]


def load_reasoning_samples(
    root: str | Path,
    split: str = "train",
    *,
    pool: str = "local",
    num_candidates: int = 8,
    seed: int = 0,
    instructions: bool = True,
    limit: int = 0,
    index: Index | None = None,
    tasks: frozenset[int] | None = None,
    issues: DataIssues | None = None,
) -> list[ReasoningSample]:
    """Every query of `split` with K candidates: its first positive, its hard negatives, random pool members.

    With `index` (anything with `coarse(query, k) -> (items, scores)`): the query's coarse top-K instead, in
    coarse order and with their scores, as search hands them to the reasoner; a query whose positive is not
    among them is reported and skipped. `seed` only matters without it.
    """
    if num_candidates < 2:
        raise ValueError(f"a reasoning sample needs at least 2 candidates, got {num_candidates}")
    issues = issues if issues is not None else DataIssues()
    data = _read_split(root, split, pool, issues)
    samples: list[ReasoningSample] = []
    for qid, (q, where) in data.queries.items():
        if tasks is not None and q.task_id not in tasks:
            continue
        cands = data.pools[q.dataset]
        positive = next((d for d in q.pos if d in cands), None)
        if positive is None:
            issues.report(where, f"no positive of {qid} ({', '.join(q.pos) or 'none listed'}) is in the {pool} pool")
            continue
        if (problem := _missing_image(q)) is not None:  # before the coarse retriever reads it
            issues.report(where, problem)
            continue
        query = _query_of(data, q, cands[positive], instructions)
        if index is None:
            items, scores = _seeded_candidates(q, cands, positive, num_candidates, seed), list[float]()
        else:
            items, scores = index.coarse(query, num_candidates)
        answer = next((i for i, item in enumerate(items) if item.id in q.pos), None)
        if answer is None:
            issues.report(where, f"the positive of {qid} is not in the coarse top-{num_candidates}")
            continue
        if (problem := _missing_image(q, items)) is not None:
            issues.report(where, problem)
            continue
        samples.append(
            ReasoningSample(qid, query, tuple(items), answer, where, q.task_id, q.dataset, coarse_scores=tuple(scores))
        )
        if limit and len(samples) >= limit:
            break
    if not samples:
        raise DataError(
            f"{data.ds.root}: no usable queries in the {split} split"
            + (f" ({len(issues)} problems reported)" if len(issues) else "")
        )
    return samples


def _cot_record(record: Any, where: str, data: _Split, instructions: bool) -> ReasoningSample:
    """One CoT line -> a sample; DataError (message without the location) when it cannot be used."""
    if not isinstance(record, dict):
        raise DataError("expected a JSON object")
    for key, kind in (("qid", str), ("candidates", list), ("cot", str), ("answer", int)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise DataError(f"field {key!r} should be a {kind.__name__}")
    qid, dids, answer = record["qid"], record["candidates"], record["answer"]
    if qid not in data.queries:
        raise DataError(f"query {qid} is not in query/{data.ds.split}/")
    q, _ = data.queries[qid]
    if not dids:
        raise DataError("no candidates")
    if not 1 <= answer <= len(dids):
        raise DataError(f"answer {answer} is outside 1..{len(dids)} (the record lists {len(dids)} candidates)")
    from retrv.rerank.grammar import inspection_requests, parse_answer

    if parse_answer(record["cot"], len(dids)).index != answer - 1:
        raise DataError(f"the cot does not end in <answer>{answer}</answer>")
    bad = [p.error for p in inspection_requests(record["cot"], len(dids)) if p.index is None]
    if bad:
        raise DataError(f"the cot asks for an {bad[0]}")
    pool = data.pools.get(str(record.get("dataset") or q.dataset)) or data.pools[q.dataset]
    missing = [d for d in dids if d not in pool]
    if missing:
        raise DataError(f"candidate {missing[0]} is not in the pool of {q.dataset}")
    picked = [pool[d] for d in dids]
    if (problem := _missing_image(q, [c.to_item() for c in picked])) is not None:
        raise DataError(problem)
    inspected = record.get("inspected") or []
    if not all(isinstance(i, int) and 1 <= i <= len(dids) for i in inspected):
        raise DataError(f"inspected {inspected} holds an index outside 1..{len(dids)}")
    return ReasoningSample(
        qid,
        _query_of(data, q, picked[answer - 1], instructions),
        tuple(c.to_item() for c in picked),
        answer - 1,
        where,
        q.task_id,
        q.dataset,
        record["cot"],
        tuple(i - 1 for i in inspected),
    )


def load_cot_samples(
    root: str | Path,
    cot_file: str | Path,
    split: str = "train",
    *,
    pool: str = "local",
    instructions: bool = True,
    limit: int = 0,
    tasks: frozenset[int] | None = None,
    issues: DataIssues | None = None,
) -> list[ReasoningSample]:
    """The records of a CoT jsonl file (synth format) resolved against the dataset; bad records reported, skipped.
    `tasks`: only records whose query has one of these task ids (None: all)."""
    from retrv.data.mbeir import numbered_lines

    issues = issues if issues is not None else DataIssues()
    path = Path(cot_file)
    if not path.is_file():
        raise DataError(f"{path}: no such CoT file")
    data = _read_split(root, split, pool, issues)
    samples: list[ReasoningSample] = []
    for where, line in numbered_lines(path):
        try:
            sample = _cot_record(json.loads(line.rstrip("\r\n")), where, data, instructions)
            if tasks is None or sample.task_id in tasks:
                samples.append(sample)
        except json.JSONDecodeError as e:
            issues.report(where, f"malformed JSON ({e.msg} at column {e.colno})")
        except DataError as e:
            issues.report(where, str(e))
        if limit and len(samples) >= limit:
            break
    if not samples:
        raise DataError(
            f"{path}: no usable chain-of-thought records"
            + (f" ({len(issues)} problems reported)" if len(issues) else "")
        )
    return samples


# ---------------------------------------------------------------- tensors


class FeatureCache:
    """Full tokens of whole samples by key, least recently used dropped past `size` entries (0: no caching).

    The vision tower and embeddings are frozen in every stage, so a sample's full tokens never change. A
    sample's K candidates are always computed in one batch, as `Reasoner.prepare` does: batch composition
    moves the vision tower's float rounding, so caching single candidates would make a run depend on its
    history (and `--resume` would drift from an uninterrupted run)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[str, SampleTokens] = OrderedDict()

    def get(self, key: str) -> SampleTokens | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: str, tokens: SampleTokens) -> None:
        if self.size <= 0:
            return
        self._items[key] = tokens
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


@dataclass
class SampleTokens:
    query: CandidateTokens
    candidates: list[CandidateTokens]

    def inspect(self, index: int) -> CandidateTokens:
        """Candidate `index` (0-based)'s full tokens: what `generate_with_inspection` injects."""
        return self.candidates[index]


def sample_tokens(
    model: Any,
    parts: Any,
    sample: ReasoningSample,
    budget: TokenBudget | None = None,
    cache: FeatureCache | None = None,
) -> SampleTokens:
    """Full tokens of the query and the K candidates (`icm.features`, as `Reasoner.prepare` makes them)."""
    from retrv.icm.features import TokenBudget, candidate_tokens_batch, query_tokens

    budget = budget or TokenBudget()
    key = f"{sample.qid}|{sample.query.instruction or ''}|{'|'.join(c.id for c in sample.candidates)}"
    found = cache.get(key) if cache is not None else None
    if found is None:
        found = SampleTokens(
            query_tokens(model, parts, sample.query, budget),
            candidate_tokens_batch(model, parts, list(sample.candidates), budget),
        )
        if cache is not None:
            cache.put(key, found)
    return found


def soft_tokens(icm: ICM, query: CandidateTokens, candidates: list[CandidateTokens]) -> torch.Tensor:
    """(K, 2, H) [content, relation] per candidate, computed as `Reasoner._soft_tokens` does (with gradients)."""
    import torch

    from retrv.icm.module import pad_tokens

    weight = next(icm.parameters())
    tokens, mask = pad_tokens([c.embeds.to(weight.device, weight.dtype) for c in candidates])
    content, memory = icm.content(tokens, mask), icm.memory(tokens, mask)
    relation = icm.relation(memory, query.embeds[None].to(weight.device, weight.dtype))
    return torch.stack([content, relation], dim=1)


def reasoning_prompt(
    tokenizer: Any,
    embed_tokens: Any,
    icm: ICM,
    tokens: SampleTokens,
    special: SpecialTokens | None = None,
    style: str = "chat",
) -> Segment:
    """The reason-mode prompt of a sample, exactly as inference builds it (`sequence.build_prompt`)."""
    from retrv.rerank.sequence import SpecialTokens, build_prompt

    soft = soft_tokens(icm, tokens.query, tokens.candidates)
    return build_prompt(
        tokenizer, embed_tokens, tokens.query, soft_tokens=soft, special=special or SpecialTokens(), style=style
    )
