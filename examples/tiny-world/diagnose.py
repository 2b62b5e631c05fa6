"""Grade a reasoner's chains of thought on the synthetic world, step by step, against the scenes.

    python examples/tiny-world/diagnose.py WORK REASONER [--limit 48] [--no-icm] [--max-new-tokens 640] [--show N]

Runs the reasoner over task 0 of WORK/test-world (the recipe's encoder and indexes) and, because every
synthetic image records its scene, checks each part of each CoT: Step 1's restatement of the query, Step 2's
objects and ruled-out candidates, Step 3's list of look-alikes, and per detailed check what the candidate
"shows" (perception), what it "should show" (a copy of Step 1), the ok/no marks (consistent with those two
descriptions as written) and the verdict (consistent as written, and true of the real scene). Each wrong
answer is charged to the first part that went wrong. It also reports what the reasoner was handed: the
positive's coarse rank, how many of the top k are look-alikes (the positive's words), and the positive's place
among them. Prints a JSON report to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

STEP1 = re.compile(r"Step 1 \(ideal result\): an image that shows (.*?)\.\n")
STEP2 = re.compile(
    r"Step 2 \(quick elimination\): (?:Candidates? ([\d, ]+) (?:do|does) not have both a (.*?) and a (.*?): ruled out\.|No candidate)"
)
ALIKE = re.compile(r"Step 3 \(detailed check\): (?:Candidates ([\d, ]+) have the same|Only candidate (\d+))")
CHECK = re.compile(
    r"Candidate (\d+) <inspection-index-start>\d+<inspection-index-end> shows (.*?); it should show (.*?);"
    r" left (.*?); right (.*?): (.*?)\."
)


def scene_of(src_content: str | None):
    from retrv.data.synth import Scene, Shape

    scene = json.loads(src_content or "{}")["scene"]
    return Scene(Shape(**scene["left"]), Shape(**scene["right"]))


def parse_caption(text: str):
    """'a large red circle left of a small blue square' (or the 'right of' form) -> Scene, or None."""
    from retrv.data.synth import Scene, Shape

    m = re.fullmatch(r"a (\w+) (\w+) (\w+) (left|right) of a (\w+) (\w+) (\w+)", text.strip())
    if not m:
        return None
    first, second = Shape(*m.group(1, 2, 3)), Shape(*m.group(5, 6, 7))
    return Scene(first, second) if m.group(4) == "left" else Scene(second, first)


def numbers(text: str | None) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text or "")]


def grade(cot: str, truth, scenes: list, answer_ok: bool, positive: int | None) -> dict:
    """Every part of one CoT, True/False (None where the part is absent)."""
    from retrv.data.synth import _difference

    easy = [i for i, s in enumerate(scenes, 1) if s.words() != truth.words()]
    alike = [i for i in range(1, len(scenes) + 1) if i not in easy]
    g: dict = {"answer": answer_ok}
    m = STEP1.search(cot)
    g["step1"] = bool(m) and m.group(1) == truth.caption()
    m = STEP2.search(cot)
    if m and m.group(1):
        g["step2_objects"] = {m.group(2), m.group(3)} == {truth.left.phrase(), truth.right.phrase()}
        g["step2_ruled_out"] = numbers(m.group(1)) == easy
    elif m:
        g["step2_objects"], g["step2_ruled_out"] = True, easy == []
    m = ALIKE.search(cot)
    g["alike"] = bool(m) and numbers(m.group(1) or m.group(2)) == alike
    g["alike_has_positive"] = bool(m) and positive in numbers(m.group(1) or m.group(2))
    checks = []
    for c in CHECK.finditer(cot):
        index, shows, should, left, right, verdict = int(c.group(1)), *c.group(2, 3, 4, 5, 6)
        seen, wanted = parse_caption(shows), parse_caption(should)
        real = scenes[index - 1] if 1 <= index <= len(scenes) else None
        check = {"index": index, "look": real is not None and seen == real, "should": wanted == truth}
        if seen and wanted:
            marks = [f"{a}/{b} {'ok' if a == b else 'no'}" for a, b in zip(seen.attributes(), wanted.attributes())]
            check["marks"] = ", ".join(marks[:3]) == left and ", ".join(marks[3:]) == right
            check["verdict"] = verdict == ("it matches" if seen == wanted else _difference(seen, wanted))
        if real is not None:
            check["verdict_true"] = verdict == ("it matches" if real == truth else _difference(real, truth))
        checks.append(check)
    g["checks"] = checks
    return g


def by_number(counts: Counter) -> dict:
    return dict(sorted(counts.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0)))


def first_fault(g: dict) -> str:
    for part in ("step1", "step2_objects", "alike_has_positive"):
        if g.get(part) is False:
            return part
    for check in g["checks"]:
        for part in ("should", "look", "marks", "verdict"):
            if check.get(part) is False:
                return f"check {part}"
    return "answer (checks right)" if g["checks"] else "no check"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("reasoner")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--no-icm", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=640)
    parser.add_argument("--show", type=int, default=0, help="print the first N wrong CoTs to stderr")
    args = parser.parse_args()

    import sys

    from retrv.bench.run import BenchConfig, pool_index_dir
    from retrv.data.mbeir import MBeirDataset
    from retrv.encoders.registry import load_encoder
    from retrv.engine import Engine
    from retrv.index.index import Index
    from retrv.rerank.factory import make_reranker
    from retrv.rerank.reasoner import ReasonerOptions

    world = args.work / "test-world"
    ds = MBeirDataset.open(world, "test")
    name = next(n for n in ds.datasets if n.endswith("_task0"))
    encoder = load_encoder(f"clip:{args.work / 'encoder'}", device="cpu")
    root = pool_index_dir(BenchConfig(data=world, index_dir=args.work / "indexes"), encoder.spec, name)
    index = Index.open(root, device="cpu", encoder=encoder)
    options = ReasonerOptions(max_new_tokens=args.max_new_tokens, candidate_tokens="full" if args.no_icm else "icm")
    reranker = make_reranker("reason", args.reasoner, device="cpu", reason=options)
    engine = Engine(index, reranker, rerank_k=args.k)
    scene = {c.did: scene_of(c.src_content) for c in ds.candidates(dataset=name)}

    faults, fallbacks, parts, checks, shown = Counter(), Counter(), Counter(), Counter(), 0
    # what the reasoner is handed: where coarse puts the positive, and its look-alikes (the same words)
    coarse_rank, alike_count, rank_among_alike = Counter(), Counter(), Counter()
    queries = list(ds.queries(dataset=name))[: args.limit]
    for q in queries:
        truth = scene_of(q.src_content)
        items, _ = index.coarse(q.to_query(), args.k)
        ranking = engine.search(q.to_query(), k=args.k)
        answer_ok = bool(ranking.hits) and ranking.hits[0].id in q.pos
        positive = next((n for n, i in enumerate(items, 1) if i.id in q.pos), None)
        scenes = [scene[i.id] for i in items]
        g = grade(ranking.reasoning or "", truth, scenes, answer_ok, positive)
        alike = [s.words() == truth.words() for s in scenes]
        coarse_rank[str(positive or "out")] += 1
        alike_count[str(sum(alike))] += 1
        if positive is not None:
            rank_among_alike[str(sum(alike[:positive]))] += 1
        parts["positive in the top k"] += positive is not None
        if ranking.fallback:
            fallbacks[re.sub(r"\d+", "N", ranking.fallback)[:80]] += 1
        for part in ("answer", "step1", "step2_objects", "step2_ruled_out", "alike", "alike_has_positive"):
            parts[f"{part} right"] += g.get(part) is True
        for check in g["checks"]:
            checks["checks"] += 1
            for part in ("look", "should", "marks", "verdict", "verdict_true"):
                checks[f"{part} right"] += check.get(part) is True
        if not answer_ok:
            faults[
                "positive not in the top k" if positive is None else "fallback" if ranking.fallback else first_fault(g)
            ] += 1
            if shown < args.show:
                shown += 1
                print(f"--- {q.text}\n{ranking.reasoning}\n{json.dumps(g)}\n", file=sys.stderr)
    report = {
        "reasoner": args.reasoner,
        "icm": not args.no_icm,
        "queries": len(queries),
        "parts": dict(parts),
        "checks": dict(checks),
        "wrong answers by first fault": dict(faults.most_common()),
        "coarse": {
            "positive's rank": by_number(coarse_rank),
            "look-alikes in the top k": by_number(alike_count),
            "positive's place among the look-alikes": by_number(rank_among_alike),
        },
        "fallbacks": dict(fallbacks.most_common()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
