"""Reasoning samples from an M-BEIR-layout world: K candidates, the positive found, bad data reported with file:line."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from retrv.data.mbeir import MBeirDataset
from retrv.data.synth import SynthConfig, generate
from retrv.errors import DataError
from retrv.rerank.base import Candidate
from retrv.train.loop import DataIssues
from retrv.train.samples import FeatureCache, load_cot_samples, load_reasoning_samples, reasoning_prompt, sample_tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("samples") / "w", SynthConfig(seed=3, size=2))


def test_every_train_query_gets_k_candidates_with_its_positive_and_hard_negatives(world):
    samples = load_reasoning_samples(world, num_candidates=5, seed=1)
    queries = {q.qid: q for q in MBeirDataset.open(world, "train").queries()}
    assert len(samples) == len(queries) == 24
    for s in samples:
        q = queries[s.qid]
        ids = [c.id for c in s.candidates]
        assert len(ids) == len(set(ids)) == 5
        assert ids[s.answer] == q.pos[0]
        assert set(q.neg[:4]) <= set(ids)  # hard negatives come before random fill
        assert s.query.instruction  # the dataset's instruction, as bench gives it
        assert s.source.startswith(f"query/train/mbeir_{s.dataset}_train.jsonl:")
        assert s.coarse_scores == ()  # no coarse retriever chose them
    again = load_reasoning_samples(world, num_candidates=5, seed=1)
    other = load_reasoning_samples(world, num_candidates=5, seed=2)
    assert [[c.id for c in s.candidates] for s in again] == [[c.id for c in s.candidates] for s in samples]
    assert [[c.id for c in s.candidates] for s in other] != [[c.id for c in s.candidates] for s in samples]


def test_tasks_keep_only_their_queries_and_cot_records(world):
    samples = load_reasoning_samples(world, num_candidates=4, tasks=frozenset({0, 7}))
    assert len(samples) == 16 and {s.task_id for s in samples} == {0, 7}
    cot = load_cot_samples(world, world / "cot/train_cot.jsonl", tasks=frozenset({3}))
    every = load_cot_samples(world, world / "cot/train_cot.jsonl")
    assert cot and {s.task_id for s in cot} == {3} and len(cot) == sum(s.task_id == 3 for s in every)


def test_an_index_gives_its_coarse_top_k_in_order_and_a_positive_outside_it_is_reported(
    colour_world_dir, colour_caption_index_dir
):
    from retrv.index.index import Index

    index = Index.open(colour_caption_index_dir, device="cpu")
    issues = DataIssues()
    samples = load_reasoning_samples(colour_world_dir, num_candidates=3, index=index, issues=issues)
    assert len(samples) + len(issues) == 16 and {s.task_id for s in samples} == {3}
    for s in samples:
        items, scores = index.coarse(s.query, 3)
        assert [c.id for c in s.candidates] == [i.id for i in items] and list(s.coarse_scores) == scores
        assert scores == sorted(scores, reverse=True)
        assert s.candidates[s.answer].id == f"91:{int(s.qid.split(':')[1]) - 200}"  # image 91:30i -> caption 91:10i
    assert 0 in {s.answer for s in samples} and {s.answer for s in samples} - {0}  # both easy and hard prompts
    reported = [str(i) for i in issues.items]
    assert all(r.endswith("is not in the coarse top-3") for r in reported)
    assert sum(r.startswith("query/train/mbeir_colours_task0_train.jsonl:") for r in reported) == 8  # no image in it


def test_missing_image_and_malformed_query_are_skipped_with_file_and_line(world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    qfile = copy / "query/train/mbeir_synth_task3_train.jsonl"
    lines = qfile.read_text().splitlines()
    first = json.loads(lines[0])
    (copy / first["query_img_path"]).unlink()
    lines[1] = "{not json"
    qfile.write_text("\n".join(lines) + "\n")
    issues = DataIssues()
    samples = load_reasoning_samples(copy, num_candidates=4, issues=issues)
    assert len(samples) == 22
    reported = {str(i).split(": ", 1)[0]: str(i) for i in issues.items}
    assert set(reported) == {
        "query/train/mbeir_synth_task3_train.jsonl:1",
        "query/train/mbeir_synth_task3_train.jsonl:2",
    }
    assert "image not found" in reported["query/train/mbeir_synth_task3_train.jsonl:1"]
    assert "malformed JSON" in reported["query/train/mbeir_synth_task3_train.jsonl:2"]


def test_cot_records_resolve_and_bad_ones_are_reported(world, tmp_path):
    cot = world / "cot/train_cot.jsonl"
    records = [json.loads(line) for line in cot.read_text().splitlines()]
    samples = load_cot_samples(world, cot)
    assert [s.qid for s in samples] == [r["qid"] for r in records]
    for s, r in zip(samples, records, strict=True):
        assert [c.id for c in s.candidates] == r["candidates"] and s.answer == r["answer"] - 1 and s.cot == r["cot"]
        assert list(s.inspected) == [i - 1 for i in r["inspected"]]

    bad = tmp_path / "bad.jsonl"
    out_of_range = dict(
        records[1], answer=9, cot=records[1]["cot"].replace(f"<answer>{records[1]['answer']}<", "<answer>9<")
    )
    unknown = dict(records[2], qid="90:99999")
    inspects_nine = dict(records[3], cot="<inspection-index-start>9<inspection-index-end>" + records[3]["cot"])
    bad.write_text(
        "\n".join(
            [
                json.dumps(records[0]),
                json.dumps(out_of_range),
                json.dumps(unknown),
                "[1, 2",
                json.dumps(inspects_nine),
                json.dumps(records[4]),
            ]
        )
        + "\n"
    )
    issues = DataIssues()
    kept = load_cot_samples(world, bad, issues=issues)
    assert [s.qid for s in kept] == [records[0]["qid"], records[4]["qid"]]
    assert [str(i) for i in issues.items] == [
        f"{bad}:2: answer 9 is outside 1..8 (the record lists 8 candidates)",
        f"{bad}:3: query 90:99999 is not in query/train/",
        f"{bad}:4: malformed JSON (Expecting ',' delimiter at column 6)",
        f"{bad}:5: the cot asks for an inspection 9 out of range 1..8",
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no usable chain-of-thought"):
        load_cot_samples(world, empty)


@pytest.mark.parametrize("style", ["chat", "bare"])
def test_training_prompt_is_bit_equal_to_the_inference_prompt(world, tiny_reasoner_dir, style):
    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.reasoner import Reasoner

    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    torch.manual_seed(0)
    icm = ICM(ICMConfig(hidden_size=64, num_heads=4, num_memory_tokens=3)).eval()
    loaded = dataclasses.replace(loaded, icm=icm, config=dataclasses.replace(loaded.config, prompt_style=style))
    reasoner = Reasoner.from_loaded(loaded)
    sample = next(s for s in load_reasoning_samples(world, num_candidates=4) if s.task_id == 7)  # image + text query
    cache = FeatureCache(16)
    tokens = sample_tokens(loaded.model, loaded, sample, cache=cache)
    with torch.no_grad():
        ours = reasoning_prompt(loaded.tokenizer, loaded.model.get_input_embeddings(), icm, tokens, style=style)
    theirs = reasoner.prepare(sample.query, [Candidate(item, 0.0) for item in sample.candidates]).prompt
    assert torch.equal(ours.embeds, theirs.embeds)
    assert torch.equal(ours.position_ids, theirs.position_ids) and torch.equal(ours.token_ids, theirs.token_ids)
    assert sample_tokens(loaded.model, loaded, sample, cache=cache).candidates[0] is tokens.candidates[0]  # cached
