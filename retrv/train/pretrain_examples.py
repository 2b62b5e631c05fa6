"""The examples `retrv train pretrain` learns from: (image -> caption), (query, candidate -> Yes/No) and
(query -> one of the world's texts), read from one split of an M-BEIR-layout dataset; and the corpus the
new model's tokenizer is fitted on. See `retrv.train.pretrain` for how they are batched and trained."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrv.errors import DataError
from retrv.train.loop import DataIssues

if TYPE_CHECKING:
    from retrv.data.mbeir import MBeirCandidate, MBeirDataset, MBeirQuery

CAPTION_SYSTEM = "You describe pictures."
CAPTION_REQUEST = "Describe the image."


@dataclass(frozen=True)
class Side:
    text: str | None
    image_path: str | None
    modality: str


@dataclass(frozen=True)
class PretrainExample:
    """A caption (`query` is the image, `candidate` None), a pair (`answer` True/False) or a text (`caption`,
    written after `context`, which is given and not trained on). A text that asks to inspect candidates
    (`<inspection-index-start>i<inspection-index-end>`) gets each one's full tokens injected after the request,
    as the reasoner does: `inspections` holds them in order, or for a request past the limit or naming no
    candidate the notice the reasoner injects instead."""

    kind: str  # "caption" | "pair" | "text"
    query: Side
    source: str
    caption: str = ""
    candidate: Side | None = None
    answer: bool = False
    instruction: str | None = None
    context: str = ""
    inspections: tuple[Side | str, ...] = ()
    candidates: int = 0  # a text's candidate list length (0: its record lists none)


def caption_of(src_content: str | None, text: str | None = None, modality: str = "") -> str | None:
    """The caption of an image: `src_content` "caption", or a synthetic "scene", else an image+text item's text."""
    if src_content:
        try:
            src = json.loads(src_content)
        except ValueError:
            src = None
        if isinstance(src, dict):
            if isinstance(src.get("caption"), str):
                return src["caption"]
            scene = src.get("scene")
            if isinstance(scene, dict):
                from retrv.data.synth import Scene, Shape

                try:
                    return Scene(Shape(**scene["left"]), Shape(**scene["right"])).caption()
                except (KeyError, TypeError):
                    return None
    return text if modality == "image,text" and text else None


def _side(item: MBeirQuery | MBeirCandidate) -> Side:
    return Side(item.text or None, item.image_path, item.modality)


def load_examples(
    root: str | Path,
    split: str = "train",
    *,
    captions: bool = True,
    pairs: bool = True,
    texts: bool = False,
    texts_file: str | Path | None = None,
    hard_negatives: int = -1,
    random_negatives: int = 1,
    instructions: bool = True,
    seed: int = 0,
    issues: DataIssues | None = None,
) -> list[PretrainExample]:
    """Caption, pair and text examples of one split, in file order (deterministic in `seed`); the texts come from
    `texts_file` (default `cot/<split>_cot.jsonl` under the root)."""
    from retrv.data.mbeir import MBeirDataset

    issues = issues if issues is not None else DataIssues()
    ds = MBeirDataset.open(root, split)
    rng = random.Random(f"retrv-caption:{seed}")
    out: list[PretrainExample] = []
    seen_images: set[str] = set()
    pools: dict[str, dict[str, MBeirCandidate]] = {}

    def add_caption(side: Side, caption: str | None, source: str) -> None:
        if not captions or side.image_path is None or caption is None or side.image_path in seen_images:
            return
        if not Path(side.image_path).is_file():
            issues.report(source, f"image not found: {side.image_path}")
            return
        seen_images.add(side.image_path)
        out.append(PretrainExample("caption", Side(None, side.image_path, "image"), source, caption=caption))

    for dataset in ds.datasets:
        pool = pools[dataset] = {c.did: c for c in _pool(ds, dataset, issues)}
        for c in pool.values():
            add_caption(_side(c), caption_of(c.src_content, c.text, c.modality), f"{dataset} candidate {c.did}")
        dids = sorted(pool)
        for q in ds.queries(dataset=dataset):
            source = f"{dataset} query {q.qid}"
            add_caption(_side(q), caption_of(q.src_content, q.text, q.modality), source)
            if not pairs:
                continue
            positives = [d for d in q.pos if d in pool]
            if not positives:
                issues.report(source, "no positive in the local pool")
                continue
            negatives = [d for d in q.neg if d in pool and d not in positives]
            negatives = negatives if hard_negatives < 0 else negatives[:hard_negatives]
            others = [d for d in dids if d not in positives and d not in q.neg]
            negatives += rng.sample(others, min(random_negatives, len(others)))
            for did in positives + negatives:
                cand = pool[did]
                instruction = ds.instruction(dataset, q.modality, cand.modality) if instructions else None
                out.append(
                    PretrainExample(
                        "pair",
                        _side(q),
                        source,
                        candidate=_side(cand),
                        answer=did in positives,
                        instruction=instruction,
                    )
                )
    if texts:
        # Each text after its query (when the record names one), so copying from the query is learnt here, on
        # batches of 32, rather than in SFT's LoRA on batches of 4.
        queries = {q.qid: q for dataset in ds.datasets for q in ds.queries(dataset=dataset)}
        for where, query, context, text, dids in _world_texts(
            Path(texts_file or ds.root / "cot" / f"{split}_cot.jsonl"), issues
        ):
            owner = queries.get(query.get("qid", ""))
            if "qid" in query and owner is None:
                issues.report(where, f"qid {query['qid']} is not a {split} query")
                continue
            pool = pools.get(owner.dataset, {}) if owner else {}
            if missing := [d for d in dids if d not in pool]:
                issues.report(
                    where, f"candidate {missing[0]} is not in the local pool of {owner.dataset if owner else 'a query'}"
                )
                continue
            side = _side(owner) if owner else Side(query.get("query"), None, "text")
            inspections = _inspections(text, [_side(pool[d]) for d in dids])
            out.append(
                PretrainExample(
                    "text", side, where, caption=text, context=context, inspections=inspections, candidates=len(dids)
                )
            )
    if not out:
        raise DataError(f"{ds.root}: no caption, pair or text examples in the {split} split")
    return out


def _inspections(text: str, candidates: list[Side]) -> tuple[Side | str, ...]:
    """What each inspection request in `text` injects, in order, as `rerank.decode` serves them: the candidate,
    or a notice."""
    from retrv.rerank.decode import INVALID_NOTICE, LIMIT_NOTICE
    from retrv.rerank.grammar import inspection_requests
    from retrv.rerank.reasoner import ReasonerOptions

    out: list[Side | str] = []
    for request in inspection_requests(text, len(candidates)):
        if request.index is None:
            out.append(INVALID_NOTICE)
        elif sum(isinstance(x, Side) for x in out) >= ReasonerOptions().max_inspections:
            out.append(LIMIT_NOTICE)
        else:
            out.append(candidates[request.index])
    return tuple(out)


def _world_texts(path: Path, issues: DataIssues) -> list[tuple[str, dict[str, str], str, str, list[str]]]:
    """(file:line, query, context, text, candidates) of a JSONL of {"cot": text, "context": ..., "qid": ... or
    "query": ..., "candidates": [did, ...]} records, when the file exists: the text is written after the split's
    query `qid`, or after a text query given inline, or after nothing; `context` is given before it in the same
    turn; candidate i of an inspection request is candidates[i-1] of the query's local pool."""
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except ValueError as e:
            issues.report(where, f"not JSON ({e})")
            continue
        text = record.get("cot") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            issues.report(where, 'expected an object with a non-empty "cot" string')
            continue
        context = record.get("context", "")
        if not isinstance(context, str) or not isinstance(record.get("query", ""), str):
            issues.report(where, '"context" and "query" must be strings')
            continue
        dids = record.get("candidates", [])
        if not isinstance(dids, list) or not all(isinstance(d, str) for d in dids) or (dids and "qid" not in record):
            issues.report(where, '"candidates" must be a list of dids of the pool of the record\'s "qid"')
            continue
        query = {k: record[k] for k in ("qid", "query") if isinstance(record.get(k), str)}
        out.append((where, query, context, text, dids))
    return out


def _pool(ds: MBeirDataset, dataset: str, issues: DataIssues) -> list[MBeirCandidate]:
    try:
        return list(ds.candidates(pool="local", dataset=dataset))
    except DataError as e:
        issues.report(dataset, str(e))
        return []


def world_corpus(examples: list[PretrainExample], root: str | Path) -> list[str]:
    """Texts the tokenizer is fitted on: captions, queries, instructions, both prompts, the teacher CoT."""
    from retrv.rerank.prompts import SCORE_SYSTEM, pair_question
    from retrv.rerank.sequence import SpecialTokens, system_prompt
    from retrv.train.random_models import DEFAULT_CORPUS

    texts = [
        *DEFAULT_CORPUS,
        SCORE_SYSTEM,
        CAPTION_SYSTEM,
        CAPTION_REQUEST,
        system_prompt(SpecialTokens(), "icm"),
        system_prompt(SpecialTokens(), "full"),
        "Query: ",
        "Candidate: ",
        "Candidates:",
        "Task: ",
    ]
    texts += [
        pair_question(q, c) + " Answer Yes or No." for q in ("text", "image", "image,text") for c in ("text", "image")
    ]
    texts += ["Yes", "No"] * 50  # single tokens, whatever the corpus
    texts += ["user assistant system"] * 50  # the chat roles as single tokens: every prompt carries two
    texts += [" ".join(map(str, range(1, 51)))] * 10  # candidate numbers (1..50) as single tokens
    for e in examples:
        texts += [t for t in (e.caption, e.query.text, e.instruction, e.candidate and e.candidate.text) if t]
    cot = Path(root) / "cot" / "train_cot.jsonl"
    if cot.is_file():
        seen: set[str] = set()  # one CoT a query: its variants hold the same words, and would outweigh the rest
        for line in cot.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                qid, text = record.get("qid"), record["cot"]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if qid is None or qid not in seen:
                seen.add(qid)
                texts.append(text)
    return texts
