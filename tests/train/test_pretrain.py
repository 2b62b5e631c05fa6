"""`retrv train pretrain`: a tiny VLM trained from scratch on the synthetic world's captions and Yes/No pairs."""

from __future__ import annotations

import json

import pytest

TINY = dict(hidden=32, layers=1, heads=4, kv_heads=2, vision_hidden=16, vision_depth=1, vocab_size=500, image_size=56)


@pytest.fixture(scope="module")
def synth_world(tmp_path_factory):
    from retrv.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("caption-world"), SynthConfig(seed=3, size=2))


@pytest.fixture(scope="module")
def trained(synth_world, tmp_path_factory):
    from retrv.train.pretrain import PretrainConfig, pretrain_vlm

    out = tmp_path_factory.mktemp("caption-out")
    config = PretrainConfig(
        out=str(out), data=str(synth_world), max_steps=30, batch_size=8, lr=3e-3, warmup_steps=2, save_every=0, **TINY
    )
    return config, pretrain_vlm(config)


def test_examples_cover_captions_positives_and_every_hard_negative(synth_world):
    from retrv.data.mbeir import MBeirDataset
    from retrv.train.pretrain_examples import caption_of, load_examples

    examples = load_examples(synth_world, random_negatives=1)
    ds = MBeirDataset.open(synth_world, "train")
    queries = list(ds.queries())
    pairs = [e for e in examples if e.kind == "pair"]
    assert len(pairs) == sum(1 + len(q.neg) + 1 for q in queries)  # positive, hard negatives, one random
    assert sum(e.answer for e in pairs) == len(queries)
    q = queries[0]
    mine = [e for e in pairs if e.source.endswith(f"query {q.qid}")]
    assert [e.answer for e in mine[: 1 + len(q.neg)]] == [True] + [False] * len(q.neg)
    capped = [e for e in load_examples(synth_world, hard_negatives=1, random_negatives=0) if e.kind == "pair"]
    assert len(capped) == 2 * len(queries)  # the positive and the first hard negative
    texts = [e for e in load_examples(synth_world, captions=False, pairs=False, texts=True)]
    cots = (synth_world / "cot" / "train_cot.jsonl").read_text().splitlines()
    assert [e.caption for e in texts] == [json.loads(line)["cot"] for line in cots]
    by_qid = {q.qid: q for q in queries}
    assert [(e.query.text, e.query.image_path) for e in texts] == [
        (by_qid[json.loads(line)["qid"]].text, by_qid[json.loads(line)["qid"]].image_path) for line in cots
    ]  # each after its query
    captions = [e for e in examples if e.kind == "caption"]
    assert len({e.query.image_path for e in captions}) == len(captions)  # every image once
    cand = next(c for c in ds.candidates(dataset="synth_task0") if c.image_path)
    mine = next(e for e in captions if e.query.image_path == cand.image_path)
    assert mine.caption == caption_of(cand.src_content) == json.loads(cand.src_content)["caption"]
    assert mine.caption.startswith("a ") and " left of a " in mine.caption


def test_loss_falls_and_every_parameter_changes(trained):
    import torch

    from retrv.rerank.checkpoint import load_reasoner
    from retrv.train.pretrain import build_base
    from retrv.train.pretrain_examples import load_examples, world_corpus

    config, summary = trained
    losses = [json.loads(line)["loss"] for line in summary.metrics_path.read_text().splitlines()]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:3]) / 3
    initial = build_base(config, world_corpus(load_examples(config.data), config.data)).model.state_dict()
    after = load_reasoner(config.out, device="cpu").model.state_dict()
    assert initial.keys() == after.keys()
    unchanged = [name for name, w in initial.items() if torch.equal(w, after[name])]
    assert unchanged == []


def test_output_loads_and_score_mode_reads_the_trained_prompt(trained):
    """Score mode's P(yes) is exactly the softmax the training loss saw at the answer position."""
    import torch

    from retrv.data.mbeir import MBeirDataset
    from retrv.rerank.base import Candidate
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.scorer import Scorer
    from retrv.train.loop import DataIssues
    from retrv.train.pretrain import PretrainCollator
    from retrv.train.pretrain_examples import load_examples

    config, _ = trained
    loaded = load_reasoner(config.out, device="cpu")
    assert loaded.config.stage == "base" and loaded.icm is None
    scorer = Scorer(loaded)
    ds = MBeirDataset.open(config.data, "train")
    q = next(ds.queries(dataset="synth_task7"))  # image + edit text -> image: two images in one prompt
    pool = {c.did: c for c in ds.candidates(dataset="synth_task7")}
    dids = [q.pos[0], *q.neg]
    instruction = ds.instruction("synth_task7", q.modality, "image")
    p_yes, _conf, tokens = scorer.score(q.to_query(instruction), [Candidate(pool[d].to_item(), 0.0) for d in dids])
    assert tokens > 0 and all(0.0 <= p <= 1.0 for p in p_yes)

    examples = [e for e in load_examples(config.data) if e.kind == "pair" and e.source.endswith(f"query {q.qid}")]
    collate = PretrainCollator(loaded.tokenizer, loaded.processor, DataIssues())
    for e, expected in zip(examples, p_yes):
        batch = collate([e])
        answer_at = int((batch["labels"][0] != -100).nonzero()[0]) - 1
        with torch.no_grad():
            inputs = {
                k: batch[k]
                for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
            }
            logits = loaded.model(**inputs).logits[0, answer_at, batch["answer_ids"]]
        assert float(torch.softmax(logits, -1)[0]) == pytest.approx(expected, abs=1e-5)


def test_a_text_is_written_after_its_query(synth_world, trained):
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.train.loop import DataIssues
    from retrv.train.pretrain import PretrainCollator
    from retrv.train.pretrain_examples import load_examples

    loaded = load_reasoner(trained[0].out, device="cpu")
    texts = load_examples(synth_world, captions=False, pairs=False, texts=True)
    collator = PretrainCollator(loaded.tokenizer, loaded.processor, DataIssues())
    by_modality = {e.query.modality: e for e in texts}
    text_query, image_query = by_modality["text"], by_modality["image"]
    prompt, images = collator.prompt(text_query)
    assert f"Query: {text_query.query.text}" in prompt and images == [] and prompt.endswith("assistant\n")
    prompt, images = collator.prompt(image_query)
    assert images == [image_query.query.image_path] and "<|vision_start|>" in prompt
    batch = collator([text_query, image_query])
    labels = batch["labels"][0]
    written = loaded.tokenizer.decode(labels[labels != -100].tolist())
    assert written.startswith(text_query.caption)  # the loss is on the reasoning only, not on the query
    skills = load_examples(
        synth_world, captions=False, pairs=False, texts=True, texts_file=synth_world / "cot" / "train_skills.jsonl"
    )
    check = next(e for e in skills if e.context and e.query.text)
    prompt, images = collator.prompt(check)
    assert f"Query: {check.query.text}" in prompt and prompt.endswith("assistant\n" + check.context) and images == []
    labels = collator([check])["labels"][0]
    assert loaded.tokenizer.decode(labels[labels != -100].tolist()) == check.caption + "<|im_end|>"  # not Step 1


def test_a_text_sees_each_candidate_it_inspects(synth_world, trained):
    import torch
    from PIL import Image

    from retrv.data.mbeir import MBeirDataset
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.train.loop import DataIssues
    from retrv.train.pretrain import IGNORE, PretrainCollator, pretrain_loss
    from retrv.train.pretrain_examples import Side, load_examples

    loaded = load_reasoner(trained[0].out, device="cpu")
    tok = loaded.tokenizer
    texts = load_examples(synth_world, captions=False, pairs=False, texts=True)
    cots = {
        json.loads(line)["cot"]: json.loads(line)
        for line in (synth_world / "cot" / "train_cot.jsonl").read_text().splitlines()
    }
    collator = PretrainCollator(tok, loaded.processor, DataIssues())
    # an edit query (its own image first) whose CoT inspects image candidates, and a caption query inspecting texts
    edit = next(e for e in texts if e.query.modality == "image,text" and len(e.inspections) > 1)
    captions = next(e for e in texts if e.query.modality == "image" and e.inspections)
    record = cots[edit.caption]
    pool = {c.did: c for c in MBeirDataset.open(synth_world, "train").candidates(dataset=record["dataset"])}
    assert [s.image_path for s in edit.inspections] == [
        pool[record["candidates"][i - 1]].image_path for i in record["inspected"]
    ]
    assert all(isinstance(s, Side) and s.text and s.image_path is None for s in captions.inspections)
    batch = collator([edit, captions])
    for row, e in enumerate((edit, captions)):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert tok.decode(labels[labels != IGNORE].tolist()) == e.caption + "<|im_end|>"  # injections are not trained
        written = tok.decode(ids[batch["attention_mask"][row] == 1].tolist())
        after = written.split("<inspection-index-end>")[1:]
        assert len(after) == len(e.inspections)
        for piece, seen in zip(after, e.inspections):
            pads = "<|image_pad|>" * (trained[0].image_size // 28) ** 2
            injected = f"<|vision_start|>{pads}<|vision_end|>\n" if seen.image_path else f"{seen.text}\n"
            assert piece.startswith(injected) and piece[len(injected) :].startswith(" ")  # then the reasoning goes on
        assert bool(((batch["mm_token_type_ids"][row] == 1) == (ids == collator.image_pad)).all())
    # pixels in the order the model fills image tokens: each row's query image, then what that row inspected
    in_order = [edit.query.image_path, *[s.image_path for s in edit.inspections], captions.query.image_path]
    expected = loaded.processor.image_processor(
        images=[Image.open(p).convert("RGB") for p in in_order], return_tensors="pt"
    )
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    assert batch["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    loss, _ = pretrain_loss(loaded.model, batch)  # the model takes every image token where it stands
    assert torch.isfinite(loss)


def test_length_buckets_give_the_whole_batchs_loss_and_gradients(synth_world, trained, monkeypatch):
    import torch

    import retrv.train.pretrain as caption
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.train.loop import DataIssues
    from retrv.train.pretrain_examples import load_examples

    loaded = load_reasoner(trained[0].out, device="cpu")
    every = load_examples(synth_world, texts=True)
    texts = [e for e in every if e.kind == "text"]
    mixed = [
        next(e for e in every if e.kind == "caption"),
        next(e for e in every if e.kind == "pair" and not e.answer),
        next(e for e in every if e.kind == "pair" and e.answer),
        next(e for e in texts if e.query.modality == "text"),
        next(e for e in texts if e.query.modality == "image,text" and len(e.inspections) > 1),
        next(e for e in texts if e.query.modality == "image" and e.inspections),
    ]
    batch = caption.PretrainCollator(loaded.tokenizer, loaded.processor, DataIssues(), "bare")(mixed)
    lengths = batch["attention_mask"].sum(1)
    image_blocks = (batch["input_ids"] == loaded.tokenizer.convert_tokens_to_ids("<|vision_start|>")).sum(1)
    assert batch["images_per_row"].tolist() == image_blocks.tolist()  # each row's image blocks, counted
    assert (
        batch["images_per_row"][4] == 1 + len(mixed[4].inspections) and len(set(batch["images_per_row"].tolist())) > 1
    )
    assert len(set(lengths.tolist())) > 3  # rows of different widths, images spread over them
    results = []
    for size in (len(mixed), 2, 1):
        monkeypatch.setattr(caption, "LENGTH_BUCKET", size)
        loaded.model.zero_grad(set_to_none=True)
        loss, metrics = caption.pretrain_loss(loaded.model, batch)
        loss.backward()
        results.append(
            (loss.detach(), metrics, [p.grad.clone() for p in loaded.model.parameters() if p.grad is not None])
        )
    whole, *bucketed = results
    for loss, metrics, grads in bucketed:
        torch.testing.assert_close(loss, whole[0], rtol=1e-5, atol=1e-6)
        assert metrics.keys() == whole[1].keys() == {"caption_loss", "pair_loss", "pair_accuracy", "text_loss"}
        assert all(abs(metrics[k] - whole[1][k]) < 1e-5 for k in metrics)
        assert len(grads) == len(whole[2])
        for g, w in zip(grads, whole[2]):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    rows = [rows for rows, _ in caption.length_buckets(batch, 2)]
    assert [r for chunk in rows for r in chunk] == lengths.argsort(descending=True, stable=True).tolist()


@pytest.mark.parametrize("style", ["bare", "chat"])
def test_a_text_in_the_reasoners_layout_is_the_reasoners_prompt(synth_world, trained, style):
    import torch

    from retrv.icm.features import tokens_of
    from retrv.rerank.checkpoint import load_reasoner
    from retrv.rerank.decode import text_stack
    from retrv.rerank.sequence import build_prompt
    from retrv.train.loop import DataIssues
    from retrv.train.pretrain import IGNORE, PretrainCollator
    from retrv.train.pretrain_examples import load_examples

    loaded = load_reasoner(trained[0].out, device="cpu")
    tok, embed = loaded.tokenizer, loaded.model.get_input_embeddings()
    edit = next(
        e
        for e in load_examples(synth_world, captions=False, pairs=False, texts=True)
        if e.query.modality == "image,text" and e.inspections
    )
    skills = load_examples(
        synth_world, captions=False, pairs=False, texts=True, texts_file=synth_world / "cot" / "train_skills.jsonl"
    )
    restate = next(e for e in skills if not e.candidates)
    check = next(e for e in skills if e.context and e.query.text)
    collator = PretrainCollator(tok, loaded.processor, DataIssues(), prompt_style=style, num_candidates=3)
    batch = collator([edit, restate, check])
    context = tok.encode(check.context, add_special_tokens=False)
    for row, (e, k) in enumerate(
        ((edit, 8), (restate, 3), (check, 8))
    ):  # a record's own candidates, else --num-candidates
        query = tokens_of(loaded.model, loaded, [e.query.text], [e.query.image_path])[0]
        icm = embed.weight[tok.convert_tokens_to_ids("<|icm|>")].detach()
        with torch.no_grad():
            prompt = build_prompt(tok, embed, query, soft_tokens=icm.expand(k, 2, -1), style=style)
        n, labels = len(prompt), batch["labels"][row]
        assert batch["input_ids"][row, :n].tolist() == prompt.token_ids.tolist()
        if e is check:  # its context follows the prompt, given
            assert batch["input_ids"][row, n : n + len(context)].tolist() == context
            n += len(context)
        assert bool((labels[:n] == IGNORE).all())
        assert tok.decode(labels[labels != IGNORE].tolist()) == e.caption + "<|im_end|>"  # after its context
        if row == 0:  # the model reads the query image where the reasoner puts it: the same positions, the same states
            inputs = {
                k: batch[k]
                for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
            }
            with torch.no_grad():
                theirs = loaded.model(**inputs, output_hidden_states=True).hidden_states[-1][0, :n]
                ours = text_stack(loaded.model, [prompt])[0]
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_texts_file_reads_the_skills_and_reports_bad_lines(synth_world, tmp_path):
    from retrv.data.mbeir import MBeirDataset
    from retrv.errors import TrainConfigError
    from retrv.train.loop import DataIssues
    from retrv.train.pretrain import PretrainConfig
    from retrv.train.pretrain_examples import load_examples

    skills = synth_world / "cot" / "train_skills.jsonl"
    texts = load_examples(synth_world, captions=False, pairs=False, texts=True, texts_file=skills)
    records = [json.loads(line) for line in skills.read_text().splitlines()]
    assert [(e.context, e.caption) for e in texts] == [(r.get("context", ""), r["cot"]) for r in records]
    by_qid = {q.qid: q for q in MBeirDataset.open(synth_world, "train").queries()}
    for e, r in zip(texts, records):  # a restatement after its inline query, a check after its split's query
        q = by_qid.get(r.get("qid", ""))
        assert (e.query.text, e.query.image_path) == ((q.text, q.image_path) if q else (r["query"], None))
        assert len(e.inspections) == (1 if r["skill"] == "check" else 0)
    qid = next(iter(by_qid))
    (tmp_path / "by-qid.jsonl").write_text(json.dumps({"qid": qid, "cot": "Step 1"}) + "\n")
    [e] = load_examples(synth_world, captions=False, pairs=False, texts=True, texts_file=tmp_path / "by-qid.jsonl")
    assert (e.query.text, e.query.image_path) == (by_qid[qid].text, by_qid[qid].image_path)
    broken = tmp_path / "texts.jsonl"
    broken.write_text(
        json.dumps(records[0])
        + "\n{not json\n"
        + json.dumps({"qid": "90:1"})
        + "\n"
        + json.dumps({"qid": "99:99", "cot": "Step 1"})
        + "\n"
        + json.dumps({"qid": qid, "cot": "Step 1", "candidates": ["99:99"]})
        + "\n"
        + json.dumps({"cot": "Step 1", "candidates": [qid]})
        + "\n"
    )
    issues = DataIssues()
    texts = load_examples(synth_world, captions=False, pairs=False, texts=True, texts_file=broken, issues=issues)
    assert [e.caption for e in texts] == [records[0]["cot"]]
    assert sorted((i.source, i.reason.split(" (")[0]) for i in issues.items) == [
        (f"{broken}:2", "not JSON"),
        (f"{broken}:3", 'expected an object with a non-empty "cot" string'),
        (f"{broken}:4", "qid 99:99 is not a train query"),
        (f"{broken}:5", f"candidate 99:99 is not in the local pool of {by_qid[qid].dataset}"),
        (f"{broken}:6", '"candidates" must be a list of dids of the pool of the record\'s "qid"'),
    ]
    with pytest.raises(TrainConfigError, match=r"--texts-file .*missing.jsonl: no such file"):
        PretrainConfig(
            out=str(tmp_path), data=str(synth_world), texts=True, texts_file=str(tmp_path / "missing.jsonl")
        ).validate()


def test_rope_sections_default_to_the_width_axis_and_are_checked(synth_world, trained, tmp_path):
    from retrv.errors import TrainConfigError
    from retrv.train.pretrain import PretrainConfig

    rope = json.loads((trained[1].out_dir / "config.json").read_text())["text_config"]["rope_parameters"]
    assert rope["mrope_section"] == [1, 1, 2] and rope["rope_theta"] == 1000.0  # head size 8 in the tiny test model

    assert PretrainConfig(out=str(tmp_path), data=str(synth_world)).rope_sections() == [1, 1, 6]  # 64 / 4 heads
    with pytest.raises(TrainConfigError, match="--mrope-section must be three counts summing to head size / 2 = 8"):
        PretrainConfig(out=str(tmp_path), data=str(synth_world), mrope_section="2,2,2").validate()


def test_bad_config_is_one_clear_message(synth_world, tmp_path):
    from retrv.errors import TrainConfigError
    from retrv.train.pretrain import PretrainConfig

    with pytest.raises(TrainConfigError, match="--hidden 30 must split into --heads 4"):
        PretrainConfig(out=str(tmp_path), data=str(synth_world), hidden=30).validate()
    with pytest.raises(TrainConfigError, match="nothing to train on"):
        PretrainConfig(out=str(tmp_path), data=str(synth_world), captions=False, pairs=False).validate()
