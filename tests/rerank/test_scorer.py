"""Score mode: P(yes) from the answer logits, batching, fusion with the coarse score, tie-breaks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retrv.errors import ScoreError
from retrv.images import load_image
from retrv.items import Item, Query
from retrv.rerank.base import Candidate, Reranker
from retrv.rerank.checkpoint import load_reasoner
from retrv.rerank.prompts import pair_question
from retrv.rerank.scorer import Scorer, fusion_order, pick_answer_tokens


@pytest.fixture(scope="module")
def loaded(tiny_reasoner_dir):
    return load_reasoner(str(tiny_reasoner_dir), device="cpu")


@pytest.fixture(scope="module")
def candidates(sample_photos_dir):
    photo = lambda name: str(sample_photos_dir / name)  # noqa: E731
    specs = [
        ("text", "a cup of coffee on a table", None),
        ("image", None, photo("coffee.jpg")),
        ("image,text", "a photo of a cat", photo("chelsea.jpg")),
        ("text", "a rocket launching into the sky", None),
        ("image", None, photo("rocket.jpg")),
    ]
    return [
        Candidate(Item(f"id{i}", f"src{i}", mod, text=text, image_path=path), coarse_score=0.9 - 0.05 * i)
        for i, (mod, text, path) in enumerate(specs)
    ]


def _reference_p_yes(scorer: Scorer, query: Query, cand: Candidate) -> float:
    """An independent plain forward of the same prompt: softmax over the two answer logits at the end."""
    from PIL import Image

    images = [p for p in (query.image, cand.item.image_path) if p is not None]
    pics = [Image.open(p).convert("RGB") for p in images]
    batch = scorer.reasoner.processor(text=[scorer.prompt(query, cand)], images=pics or None, return_tensors="pt")
    with torch.no_grad():
        logits = scorer.reasoner.model(**batch).logits[0, -1].double()
    yes, no = logits[scorer.answers.yes_id].item(), logits[scorer.answers.no_id].item()
    return 1.0 / (1.0 + math.exp(no - yes))


@pytest.mark.parametrize("query_kind", ["text", "image,text"])
def test_score_is_softmax_over_answer_logits(loaded, candidates, sample_photos_dir, query_kind):
    query = {
        "text": Query(text="a photo of a cat"),
        "image,text": Query(text="the same but a rocket", image=sample_photos_dir / "coffee.jpg"),
    }[query_kind]
    scorer = Scorer(loaded, batch_size=4)
    assert isinstance(scorer, Reranker) and scorer.mode == "score"
    result = scorer.rerank(query, candidates)
    expected = [_reference_p_yes(scorer, query, c) for c in candidates]
    np.testing.assert_allclose(result.rerank_scores, expected, atol=1e-6)
    assert all(0.0 <= p <= 1.0 for p in result.rerank_scores)
    assert all(0.0 <= c <= 1.0 for c in result.confidences)
    assert result.prompt_tokens > 0 and result.latency_ms["total"] > 0


def test_batched_equals_one_by_one(loaded, candidates, sample_photos_dir):
    query = Query(text="a small red circle", image=sample_photos_dir / "flower.jpg")
    batched = Scorer(loaded, batch_size=3).rerank(query, candidates)
    single = Scorer(loaded, batch_size=1).rerank(query, candidates)
    np.testing.assert_allclose(batched.rerank_scores, single.rerank_scores, atol=1e-5)
    np.testing.assert_allclose(batched.confidences, single.confidences, atol=1e-5)
    assert batched.prompt_tokens == single.prompt_tokens


def test_fusion_order_is_coarse_plus_weighted_score(loaded, candidates):
    query = Query(text="a cup of coffee")
    for weight in (0.0, 1.0, 1000.0):
        result = Scorer(loaded, fusion_weight=weight).rerank(query, candidates)
        p = np.array(result.rerank_scores)
        coarse = np.array([c.coarse_score for c in candidates])
        np.testing.assert_allclose(result.scores, coarse + weight * p)
        assert result.order == sorted(range(len(candidates)), key=lambda i: -(coarse[i] + weight * p[i]))
        if weight == 0.0:
            assert result.order == list(range(len(candidates)))  # coarse order untouched
        if weight == 1000.0:
            assert result.order == list(np.argsort(-p, kind="stable"))


def test_ties_are_broken_by_confidence(loaded, candidates):
    tied = [Candidate(c.item, coarse_score=0.5) for c in candidates]
    result = Scorer(loaded, fusion_weight=0.0).rerank(Query(text="a cat"), tied)
    assert len(set(result.scores)) == 1
    assert result.order == sorted(range(len(tied)), key=lambda i: -result.confidences[i])
    # and directly: equal fused scores -> more confident first, then input order; unscored last
    assert fusion_order([1.0, 1.0, 1.0, 2.0, 3.0], [0.2, 0.9, 0.2, 0.1, None]) == [3, 1, 0, 2, 4]


def test_confidence_is_one_minus_normalised_entropy(loaded, candidates):
    result = Scorer(loaded).rerank(Query(text="a cat"), candidates)
    for p, c in zip(result.rerank_scores, result.confidences, strict=True):
        entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        assert c == pytest.approx(1 - entropy / math.log(2), abs=1e-9)


def test_unreadable_candidate_image_is_unscored_and_last(loaded, candidates, tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"nope")
    broken = Candidate(Item("bad", "bad", "image", image_path=str(bad)), coarse_score=10.0)
    result = Scorer(loaded).rerank(Query(text="a cat"), [broken, *candidates[:2]])
    assert result.rerank_scores[0] is None and result.confidences[0] is None
    assert result.order[-1] == 0
    with pytest.raises(ScoreError, match="query image"):
        Scorer(loaded).rerank(Query(image=bad), candidates[:1])


def test_answer_tokens_fall_back_to_true_false():
    from retrv.train.random_models import train_byte_bpe_tokenizer

    corpus = ["True", "False", "True or False", "assistant"] * 3
    tok = train_byte_bpe_tokenizer(corpus, vocab_size=300)
    picked = pick_answer_tokens(tok, "<|im_start|>assistant\n")
    assert (picked.yes, picked.no) == ("True", "False")
    assert tok.decode([picked.yes_id]).strip() == "True"
    with pytest.raises(ScoreError):
        pick_answer_tokens(train_byte_bpe_tokenizer(["zzz"], vocab_size=260), "assistant\n")


def test_prompt_depends_on_modality_pair(loaded, candidates, sample_photos_dir):
    scorer = Scorer(loaded)
    text_q, image_q = Query(text="a cat"), Query(image=sample_photos_dir / "chelsea.jpg")
    assert pair_question("text", "image") in scorer.prompt(text_q, candidates[1])
    assert pair_question("image", "text") in scorer.prompt(image_q, candidates[0])
    prompt = scorer.prompt(image_q, candidates[2])
    assert prompt.count("<|image_pad|>") == 2 and prompt.endswith("<|im_start|>assistant\n")
    assert "Answer Yes or No." in prompt


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} said:\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant said:\n{% endif %}"
)


def test_model_chat_template_is_used(tiny_reasoner_dir, tmp_path, candidates, sample_photos_dir):
    import json
    import shutil

    model_dir = tmp_path / "with-template"
    shutil.copytree(tiny_reasoner_dir, model_dir)
    (model_dir / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    scorer = Scorer(load_reasoner(str(model_dir), device="cpu"))
    query = Query(text="a cat", image=sample_photos_dir / "chelsea.jpg")
    prompt = scorer.prompt(query, candidates[1])
    assert prompt.startswith("<|im_start|>system said:\n") and prompt.endswith("assistant said:\n")
    assert prompt.count("<|image_pad|>") == 2
    result = scorer.rerank(query, candidates[:2])
    np.testing.assert_allclose(
        result.rerank_scores, [_reference_p_yes(scorer, query, c) for c in candidates[:2]], atol=1e-6
    )


# ---------------------------------------------------------------- RetLLM's style


def _reference_retllm(scorer: Scorer, query: Query, cand: Candidate) -> tuple[float, float]:
    """Independently: a plain forward of the prompt, softmax over the whole vocabulary at the last position,
    P("True") truncated to 2 decimals, and the entropy of that distribution."""
    from PIL import Image

    images = [p for p in (query.image, cand.item.image_path) if p is not None]
    pics = [Image.open(p).convert("RGB") for p in images]
    batch = scorer.reasoner.processor(text=[scorer.prompt(query, cand)], images=pics or None, return_tensors="pt")
    with torch.no_grad():
        logits = scorer.reasoner.model(**batch).logits[0, -1].double()
    probs = torch.softmax(logits, -1)
    true_id = scorer.reasoner.tokenizer.convert_tokens_to_ids("True")
    assert scorer.answers.yes == "True" and scorer.answers.yes_id in (true_id, scorer.answers.yes_id)
    p = probs[scorer.answers.yes_id].item()
    return math.floor(p * 100) / 100, float(-(probs * probs.log()).sum())


@pytest.fixture(scope="module")
def hub(hub_vlm_dir):
    return load_reasoner(str(hub_vlm_dir), device="cpu")


def test_retllm_scores_are_p_true_over_the_vocabulary_truncated_and_entropy_breaks_ties(hub, candidates):
    loaded = hub
    query = Query(text="a photo of a cat")
    scorer = Scorer(loaded, style="retllm", batch_size=3)
    assert "Please output True or False." in scorer.prompt(query, candidates[1])
    assert 'Does the image match the caption "a photo of a cat"?' in scorer.prompt(query, candidates[1])
    result = scorer.rerank(query, candidates)
    reference = [_reference_retllm(scorer, query, c) for c in candidates]
    for i, (score, entropy) in enumerate(reference):
        assert result.rerank_scores[i] == pytest.approx(score, abs=1e-9)
        assert result.scores[i] == result.rerank_scores[i]  # no fusion with the coarse score
        assert result.confidences[i] == pytest.approx(1 - entropy / math.log(len(loaded.tokenizer)), abs=1e-6)
    # A random model's P(True) truncates to the same score for every candidate: the entropy alone orders them.
    assert len({s for s, _ in reference}) == 1
    assert result.order == sorted(range(len(candidates)), key=lambda i: reference[i][1])
    assert result.order != list(range(len(candidates)))  # not just the coarse order


def test_retllm_composed_and_reverse_prompts(hub, candidates, sample_photos_dir):
    scorer = Scorer(hub, style="retllm")
    composed = scorer.prompt(Query(text="make it blue", image=sample_photos_dir / "coffee.jpg"), candidates[1])
    assert "modified as follows" in composed and composed.count("<|image_pad|>") == 2
    reverse = scorer.prompt(Query(image=sample_photos_dir / "coffee.jpg"), candidates[3])
    assert 'match the caption "a rocket launching into the sky"' in reverse


# ---------------------------------------------------------------- any instruct VLM


@pytest.mark.parametrize("style", ["lamra", "retllm"])
def test_score_mode_reads_a_vlm_outside_the_qwen_families(llava_dir, candidates, style):
    """A LLaVA loads with the processor it saved, and scores image candidates as an independent forward does."""
    llava = load_reasoner(str(llava_dir), device="cpu")
    assert type(llava.processor).__name__ == "LlavaProcessor"
    query = Query(text="a photo of a cat")
    scorer = Scorer(llava, style=style)
    assert "<image>" in scorer.prompt(query, candidates[1])  # the model's own image token
    result = scorer.rerank(query, candidates)
    assert all(s is not None for s in result.rerank_scores)  # the image candidates too
    for cand, score in zip(candidates, result.rerank_scores, strict=True):
        if style == "lamra":
            assert score == pytest.approx(_reference_p_yes(scorer, query, cand), abs=1e-5)
        else:
            assert score == pytest.approx(_reference_retllm(scorer, query, cand)[0], abs=1e-9)


def test_reason_mode_refuses_a_vlm_outside_the_qwen_families_in_one_line(llava_dir):
    from retrv.errors import UsageError
    from retrv.rerank.reasoner import Reasoner

    with pytest.raises(UsageError, match="this reasoner is 'llava': use --rerank score") as refused:
        Reasoner.from_loaded(load_reasoner(str(llava_dir), device="cpu"))
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------- visual retracing


def _mlp_io(model, layer):
    """Record the FFN input and output of `layer` in the next forward (after any other hook on it)."""
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["y"] = args[0].detach().clone(), output.detach().clone()

    return seen, model.model.language_model.layers[layer].mlp.register_forward_hook(hook)


def test_visual_retracing_never_triggered_is_bit_identical(loaded, candidates):
    from retrv.rerank.retracing import RetracingConfig

    query = Query(text="a photo of a cat")
    plain = Scorer(loaded).score(query, candidates)
    never = Scorer(loaded, retracing=RetracingConfig(first_layer=0, last_layer=2, threshold=1.01)).score(
        query, candidates
    )
    assert never == plain


def test_visual_retracing_forced_replaces_the_next_ffn_by_the_formula(loaded, candidates):
    from retrv.rerank.retracing import RetracingConfig, visual_retracing

    model = loaded.model
    scorer = Scorer(loaded)
    query = Query(text="a photo of a cat")
    batch = scorer.encode([scorer.prompt(query, candidates[2])], [load_image(candidates[2].item.image_path)])
    embeds = {}

    def keep_input_embeddings(module, args, kwargs):
        embeds.setdefault("v", kwargs["inputs_embeds"].detach().clone())

    grab = model.model.language_model.register_forward_pre_hook(keep_input_embeddings, with_kwargs=True)
    config = RetracingConfig(first_layer=0, last_layer=1, threshold=0.0, alpha=0.12)  # any entropy is above 0
    try:
        with torch.no_grad(), visual_retracing(model, config):
            seen, record = _mlp_io(model, 1)  # registered after the retracing hook: sees what it returns
            retraced_logits = model(**batch, use_cache=False).logits
            record.remove()
        with torch.no_grad():
            plain_logits = model(**batch, use_cache=False).logits
    finally:
        grab.remove()
    mlp = model.model.language_model.layers[1].mlp
    x, v = seen["x"][0], embeds["v"][0]
    with torch.no_grad():
        ffn = mlp(x)
        w1 = v * (mlp.gate_proj.weight.abs().mean() / v.abs().mean())
        w2 = v * (mlp.down_proj.weight.abs().mean() / v.abs().mean())
        recalled = mlp.act_fn(x @ w1.T) @ w2
        expected = 0.88 * ffn + 0.12 * (ffn.abs().mean() / recalled.abs().mean()) * recalled
    torch.testing.assert_close(seen["y"][0], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(retraced_logits, plain_logits)  # and it changes what the model says
