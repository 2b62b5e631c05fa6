"""The synthetic world: deterministic, M-BEIR-sound, hard negatives that collide on words, a true CoT."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from retrv.data.check import check_dataset as check
from retrv.data.mbeir import MBeirDataset
from retrv.data.synth import COLOURS, SYNTH_DATASET_ID, Scene, Shape, SynthConfig, generate
from retrv.errors import DataError


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "w", SynthConfig(seed=7, size=3))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scene(d: dict) -> Scene:
    return Scene(Shape(**d["left"]), Shape(**d["right"]))


def test_same_seed_same_bytes_other_seed_other_world(world, tmp_path):
    again = generate(tmp_path / "again", SynthConfig(seed=7, size=3))
    assert _files(again) == _files(world)
    other = _files(generate(tmp_path / "other", SynthConfig(seed=8, size=3)))
    ours = _files(world)
    jsonl = lambda files: {k for k in files if not k.endswith(".png")}  # noqa: E731
    assert jsonl(other) == jsonl(ours)  # same layout, different content
    assert other["query/test/mbeir_synth_task0_test.jsonl"] != ours["query/test/mbeir_synth_task0_test.jsonl"]


def test_layout_counts_and_check(world):
    assert check(world) == []
    for split, n in (("train", 12), ("test", 3)):
        ds = MBeirDataset.open(world, split)
        assert ds.datasets == ["synth_task0", "synth_task3", "synth_task7"] and ds.tasks == [0, 3, 7]
        for name, modality in (("synth_task0", "text"), ("synth_task3", "image"), ("synth_task7", "image,text")):
            qs = list(ds.queries(dataset=name))
            assert len(qs) == n and {q.modality for q in qs} == {modality}
            assert all(q.dataset_id == SYNTH_DATASET_ID for q in qs)
            pool = {c.did for c in ds.candidates(dataset=name)}
            assert all(did in pool for q in qs for did in q.pos + q.neg)  # positives and negatives are in the pool
        assert ds.instruction("synth_task7", "image,text", "image").startswith("Find the picture")
        union = {c.did for c in ds.candidates(pool="global")}
        assert union == {c.did for c in ds.candidates()}
    test_pos = {d for q in MBeirDataset.open(world, "test").queries() for d in q.pos}
    train_pos = {d for q in MBeirDataset.open(world, "train").queries() for d in q.pos}
    assert not test_pos & train_pos


def test_hard_negative_captions_have_the_same_words_bound_differently(world):
    ds = MBeirDataset.open(world, "test")
    captions = {c.did: c.text for c in ds.candidates(dataset="synth_task3")}
    compared = 0
    for q in ds.queries(dataset="synth_task3"):
        pos = captions[q.pos[0]]
        kinds = json.loads(q.src_content)["hard_negatives"]
        assert {"sides swapped", "colours swapped", "shapes swapped"} <= set(kinds.values())
        for did in q.neg:
            assert captions[did] != pos
            assert Counter(captions[did].split()) == Counter(pos.split())
            compared += 1
    assert compared >= 9
    # Text -> image: the negatives' images show scenes whose captions are the same words too.
    scenes = {c.did: json.loads(c.src_content)["caption"] for c in ds.candidates(dataset="synth_task0")}
    for q in ds.queries(dataset="synth_task0"):
        words = sorted(q.text.replace("right of", "left of").split())  # a query may say "B right of A"
        assert sorted(scenes[q.pos[0]].split()) == words
        assert all(sorted(scenes[d].split()) == words and scenes[d] != scenes[q.pos[0]] for d in q.neg)


def test_images_decode_and_show_their_scene(world):
    ds = MBeirDataset.open(world, "test")
    cands = [c for c in ds.candidates() if c.image_path]
    assert cands
    for c in cands:
        scene = _scene(json.loads(c.src_content)["scene"])
        with Image.open(c.image_path) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
            left, right = img.crop((0, 0, 32, 64)), img.crop((32, 0, 64, 64))
            # The most frequent non-background colour of each half is the colour of the shape drawn there.
            for half, obj in ((left, scene.left), (right, scene.right)):
                _count, colour = max(c for c in half.getcolors() if c[1] != (245, 245, 240))
                assert colour == COLOURS[obj.colour]
    for q in ds.queries():
        if q.image_path:
            Image.open(q.image_path).verify()


def test_edit_queries_describe_their_target(world):
    for q in MBeirDataset.open(world, "train").queries(dataset="synth_task7"):
        src = json.loads(q.src_content)
        before, after = _scene(src["scene"]), _scene(src["target"])
        if m := re.fullmatch(r"make the (\w+) (\w+)", q.text):
            shape, value = m.groups()
            key = "size" if value in ("small", "large") else "colour"
            obj = after.left if after.left.shape == shape else after.right
            assert getattr(obj, key) == value
        elif m := re.fullmatch(r"turn the (\w+) into a (\w+)", q.text):
            assert {after.left.shape, after.right.shape} == {before.left.shape, before.right.shape} - {m[1]} | {m[2]}
        else:
            assert "swap" in q.text and after == Scene(before.right, before.left)
        assert src["hard_negatives"][q.neg[0]] in ("wrong shape edited", "unedited")


def test_cot_is_the_true_reasoning(world):
    records = [json.loads(line) for line in (world / "cot/train_cot.jsonl").read_text().splitlines()]
    train = {q.qid: q for q in MBeirDataset.open(world, "train").queries()}
    assert sorted(r["qid"] for r in records) == sorted(list(train) * SynthConfig().cot_variants)
    by_qid: dict[str, list[dict]] = {}
    for r in records:
        by_qid.setdefault(r["qid"], []).append(r)
    # the variants of a query draw and order their candidates afresh: which look-alike is candidate i is in the images
    assert sum(len({tuple(v["candidates"]) for v in vs}) == len(vs) for vs in by_qid.values()) >= 0.9 * len(by_qid)
    assert len({tuple(v["answer"] for v in vs) for vs in by_qid.values()}) > 1
    pools = {
        name: {c.did: c for c in MBeirDataset.open(world, "train").candidates(dataset=name)}
        for name in ("synth_task0", "synth_task3", "synth_task7")
    }
    saw_inspection = False
    for r in records:
        q = train[r["qid"]]
        assert len(r["candidates"]) == 8 and len(set(r["candidates"])) == 8
        assert r["candidates"][r["answer"] - 1] == q.pos[0]
        steps = r["cot"].split("\n")
        assert [s.split(":")[0] for s in steps] == [
            "Step 1 (ideal result)",
            "Step 2 (quick elimination)",
            "Step 3 (detailed check)",
            "Step 4 (answer)",
        ]
        assert steps[3].endswith(f"<answer>{r['answer']}</answer>")
        tags = [int(i) for i in re.findall(r"<inspection-index-start>(\d+)<inspection-index-end>", r["cot"])]
        assert tags == r["inspected"]
        words = lambda did: sorted(json.loads(pools[q.dataset][did].src_content)["caption"].split())  # noqa: E731, B023
        alike = [i for i, d in enumerate(r["candidates"], 1) if words(d) == words(q.pos[0])]
        if len(alike) > 1:  # look-alikes are inspected in order up to the answer, nothing else is
            assert tags == alike[: alike.index(r["answer"]) + 1]
            saw_inspection = True
            caption = lambda did: json.loads(pools[q.dataset][did].src_content)["caption"]  # noqa: E731, B023
            verb, should = ("says", "should say") if q.task_id == 3 else ("shows", "should show")
            quote = (lambda t: f'"{t}"') if q.task_id == 3 else (lambda t: t)
            for i in tags:  # the request, what it shows, what it should show, the attributes side by side, the verdict
                seen, truth = caption(r["candidates"][i - 1]), caption(q.pos[0])
                look = (
                    f"Candidate {i} <inspection-index-start>{i}<inspection-index-end> {verb} {quote(seen)};"
                    f" it {should} {quote(truth)}; "
                )
                assert look in steps[2]
                comparison, verdict = steps[2].split(look)[1].split(".")[0].split(": ")
                assert comparison == _comparison(seen, truth)
                assert (verdict == "it matches") == (i == r["answer"]) == (seen == truth)
        else:
            assert tags == [] and "no detailed check is needed" in steps[2]
    assert saw_inspection


def _comparison(seen: str, truth: str) -> str:
    """'left small/large no, ...; right ...' from two captions 'a S C H left of a S C H'."""
    attributes = lambda c: [w for w in c.split() if w not in ("a", "left", "of")]  # noqa: E731
    pairs = [f"{a}/{b} {'ok' if a == b else 'no'}" for a, b in zip(attributes(seen), attributes(truth))]
    return f"left {', '.join(pairs[:3])}; right {', '.join(pairs[3:])}"


def test_skills_restate_text_queries_and_check_each_truth_against_its_look_alikes(world):
    records = [json.loads(line) for line in (world / "cot/train_skills.jsonl").read_text().splitlines()]
    ds = MBeirDataset.open(world, "train")
    restated = [r for r in records if r["skill"] == "restate"]
    assert len(restated) == 2 * len(list(ds.queries()))  # each truth in both forms
    for r in restated:
        words = r["query"].split()
        canonical = r["query"] if words[4] == "left" else " ".join(words[6:] + ["left", "of"] + words[:4])
        assert r["cot"] == f"Step 1 (ideal result): an image that shows {canonical}."
    task0 = [
        json.loads(line) for line in (world / "cot/train_cot.jsonl").read_text().splitlines() if '"task_id": 0' in line
    ]
    assert {r["cot"] for r in restated} >= {c["cot"].split("\n")[0] for c in task0}  # the CoT's own Step 1 lines
    records = [r for r in records if r["skill"] == "check"]
    assert len(records) == 3 * len(list(ds.queries()))
    caption = {c.did: json.loads(c.src_content)["caption"] for c in ds.candidates()}
    truths: dict[str, list[str]] = {}
    for q in ds.queries():
        truths.setdefault(q.dataset, []).append(caption[q.pos[0]])
    matches: dict[str, list[str]] = {}
    kinds = set()
    queries = {q.qid: q for q in ds.queries()}
    for r in records:
        q = queries[r["qid"]]  # written after its own query and that query's Step 1
        m = re.fullmatch(
            r"Candidate (\d) <inspection-index-start>(\d)<inspection-index-end> (?:shows|says) \"?(.+?)\"?;"
            r" it should (?:show|say) \"?(.+?)\"?; (.+)",
            r["cot"],
        )
        assert m and m[1] == m[2] and 1 <= int(m[1]) <= 8 and len(r["candidates"]) == 8, r["cot"]
        seen, truth = m[3], m[4]
        assert seen == caption[r["candidates"][int(m[1]) - 1]]  # what it shows is the inspected candidate
        assert (
            truth == caption[q.pos[0]] and r["context"].startswith("Step 1 (ideal result): ") and truth in r["context"]
        )
        assert sorted(seen.split()) == sorted(truth.split())  # a look-alike
        comparison, verdict = m[5].rstrip(".").split(": ")
        assert comparison == _comparison(seen, truth)
        assert (verdict == "it matches") == r["answer"] == (seen == truth)
        kinds.add(verdict)
        if r["answer"]:
            matches.setdefault(r["dataset"], []).append(truth)
    assert {d: sorted(t) for d, t in matches.items()} == {d: sorted(t) for d, t in truths.items()}  # each truth once
    assert kinds == {
        "it matches",
        "the colours are swapped",
        "the sizes are swapped",
        "the shapes are swapped",
        "the two shapes are on the wrong sides",
    }


def test_bad_sizes_and_non_empty_folders_are_refused(world, tmp_path):
    with pytest.raises(ValueError, match="between 1 and 144"):
        generate(tmp_path / "x", SynthConfig(size=145))
    with pytest.raises(ValueError, match="cot_variants must be at least 1"):
        generate(tmp_path / "x", SynthConfig(cot_variants=0))
    with pytest.raises(DataError, match="not empty"):
        generate(world, SynthConfig(seed=7, size=3))
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    generate(keep, SynthConfig(seed=1, size=1), overwrite=True)
    assert (keep / "notes.txt").read_text() == "mine" and check(keep) == []
