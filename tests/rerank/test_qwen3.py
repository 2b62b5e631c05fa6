"""Reason mode on Qwen3-VL (dense and mixture-of-experts) and Qwen3.5: 32-px merged patches, interleaved M-RoPE,
Qwen3-VL's DeepStack features in the text stack, Qwen3.5's linear-attention layers on the decode loop's cache."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers.cache_utils import DynamicCache
from typer.testing import CliRunner

from retrv.cli.app import app
from retrv.icm.features import GlanceBudget, candidate_tokens, candidate_tokens_batch, pixels_per_image_token
from retrv.images import load_image
from retrv.items import Item, Query
from retrv.rerank.base import Candidate
from retrv.rerank.checkpoint import load_reasoner
from retrv.rerank.decode import DecodeOptions, forward_segment, generate_with_inspection, text_stack
from retrv.rerank.reasoner import Reasoner, ReasonerOptions
from retrv.rerank.sequence import Segment, build_prompt, concat_segments, deepstack_inputs

S, E = "<inspection-index-start>", "<inspection-index-end>"


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"])
def hub3(request, hub_qwen3_vl_dir, tmp_path_factory):
    if request.param == "qwen3_vl":
        return load_reasoner(str(hub_qwen3_vl_dir), device="cpu")
    from retrv.train.random_models import build_random_vlm

    other = build_random_vlm(
        tmp_path_factory.mktemp(request.param), hub_layout=True, vision_depth=2, architecture=request.param
    )
    return load_reasoner(str(other), device="cpu")


@pytest.fixture(scope="module")
def candidates(sample_photos_dir):
    photo = lambda name: str(sample_photos_dir / name)  # noqa: E731
    return [
        Candidate(Item("c1", "coffee", "image", image_path=photo("coffee.jpg")), 0.9),
        Candidate(Item("c2", "rocket", "image,text", text="a rocket launching", image_path=photo("rocket.jpg")), 0.8),
        Candidate(Item("c3", "text", "text", text="a cup of coffee on a table"), 0.7),
    ]


def _deepstack_levels(loaded) -> int:
    vision = loaded.model.config.vision_config
    return len(getattr(vision, "deepstack_visual_indexes", None) or [])


def _without_deepstack(segment: Segment) -> Segment:
    return Segment(segment.embeds, segment.position_ids, segment.token_ids, segment.kind)


def test_qwen3_vl_prompt_equals_the_models_own_forward(hub3, candidates, sample_photos_dir):
    """The prompt the reasoner builds (query image and candidate images in full) reads, row for row, as the model's
    own forward on the same token ids and pixels: the same positions, the DeepStack features (if any) on the same
    rows."""
    query = Query(text="a cat", image=sample_photos_dir / "chelsea.jpg")
    from retrv.icm.features import query_tokens

    q = query_tokens(hub3.model, hub3, query)
    full = [candidate_tokens(hub3.model, hub3, c.item) for c in candidates]
    prompt = build_prompt(hub3.tokenizer, hub3.model.get_input_embeddings(), q, full=full)
    assert type(hub3.processor).__name__ == "RetrvQwen3VLProcessor"  # score mode's; Qwen3.5 reuses Qwen3-VL's
    image_pad = hub3.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    levels = _deepstack_levels(hub3)
    if levels:
        assert prompt.deepstack is not None and prompt.deepstack.shape[0] == levels == 2  # one per vision layer
        assert int(prompt.visual_mask.sum()) == q.n_image + full[0].n_image + full[1].n_image
        assert prompt.deepstack.shape[1] == q.n_image + full[0].n_image + full[1].n_image
        assert torch.equal(prompt.visual_mask, prompt.token_ids == image_pad)
    else:
        assert prompt.deepstack is None and prompt.visual_mask is None

    ids = prompt.token_ids[None]
    size = dict(hub3.image_processor.size)
    pictures = [load_image(str(p)) for p in (query.image, candidates[0].item.image_path, candidates[1].item.image_path)]
    pixels = hub3.image_processor(images=pictures, return_tensors="pt", size=size)
    with torch.no_grad():
        theirs = hub3.model(
            input_ids=ids,
            pixel_values=pixels["pixel_values"],
            image_grid_thw=pixels["image_grid_thw"],
            mm_token_type_ids=(ids == image_pad).int(),
            output_hidden_states=True,
        ).hidden_states[-1][0]
        ours = text_stack(hub3.model, [prompt])[0]
        blind = text_stack(hub3.model, [_without_deepstack(prompt)])[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if levels:
        assert float((blind - theirs).abs().max()) > 1e-2  # the features matter: leaving them out reads another prompt


def test_qwen3_vl_batched_deepstack_equals_one_by_one(hub3, candidates, sample_photos_dir):
    embed = hub3.model.get_input_embeddings()
    from retrv.icm.features import query_tokens

    image_query = query_tokens(hub3.model, hub3, Query(text="a cat", image=sample_photos_dir / "chelsea.jpg"))
    text_query = query_tokens(hub3.model, hub3, Query(text="a rocket"))
    full = [candidate_tokens(hub3.model, hub3, c.item) for c in candidates]
    a = build_prompt(hub3.tokenizer, embed, text_query, full=full[2:])  # no image at all: no DeepStack rows
    b = build_prompt(hub3.tokenizer, embed, image_query, full=full[:2])
    assert a.deepstack is None and deepstack_inputs([a], len(a)) == {}
    with torch.no_grad():
        batched = text_stack(hub3.model, [a, b])
        for i, s in enumerate((a, b)):
            single = text_stack(hub3.model, [s])[0]
            torch.testing.assert_close(batched[i, : len(s)], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("image_tokens", "square"), [(1, 1), (4, 4), (9, 9)])
def test_glance_qwen3_vl_budget_yields_the_documented_number_of_tokens(hub3, tmp_path, image_tokens, square):
    assert pixels_per_image_token(hub3.image_processor) == 32 * 32
    picture = tmp_path / "square.png"
    Image.new("RGB", (600, 600), (200, 30, 30)).save(picture)
    budget = GlanceBudget(image_tokens=image_tokens).as_token_budget(pixels_per_image_token(hub3.image_processor))
    (tokens,) = candidate_tokens_batch(hub3.model, hub3, [Item("s", "s", "image", image_path=str(picture))], budget)
    assert tokens.n_image == square
    assert tokens.deepstack is None if not _deepstack_levels(hub3) else tokens.deepstack.shape[1] == square


def test_glance_qwen3_vl_forced_inspection_carries_deepstack_and_the_cache_equals_a_fresh_prefill(hub3, candidates):
    reasoner = Reasoner.from_loaded(hub3, ReasonerOptions(max_new_tokens=120))
    assert reasoner.candidate_tokens == "glance"
    prepared = reasoner.prepare(Query(text="a rocket"), candidates)
    image_pad = hub3.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert 2 <= int((prepared.prompt.token_ids == image_pad).sum()) <= 2 * 4  # two images, a glance each
    forced = hub3.tokenizer(f"Maybe {S}2{E} yes <answer>2</answer>", add_special_tokens=False)["input_ids"]
    seen: list[torch.Tensor] = []

    def hook(generated, logits):
        seen.append(logits.clone())
        out = torch.full_like(logits, float("-inf"))
        out[forced[min(len(generated), len(forced) - 1)]] = 0.0
        return out

    trace = generate_with_inspection(
        reasoner.model,
        reasoner.tokenizer,
        prepared.prompt,
        prepared.inspect,
        len(candidates),
        DecodeOptions(max_new_tokens=120),
        special=reasoner.special,
        logits_hook=hook,
    )
    assert trace.inspected == [1] and [s.kind for s in trace.segments] == ["generated", "inspection", "generated"]
    full = candidate_tokens(hub3.model, hub3, candidates[1].item)
    injected = trace.segments[1]
    assert int((injected.token_ids == image_pad).sum()) == full.n_image > 4  # the full-resolution image
    if _deepstack_levels(hub3):  # with its features
        assert int(injected.visual_mask.sum()) == full.n_image
        torch.testing.assert_close(injected.deepstack, full.deepstack, rtol=0, atol=0)
    run = len(trace.segments[0])
    with torch.no_grad():
        fresh = forward_segment(
            reasoner.model,
            DynamicCache(config=reasoner.model.config.get_text_config()),
            concat_segments([trace.prompt, *trace.segments[:2]]),
        )
    torch.testing.assert_close(seen[run], fresh, rtol=0, atol=1e-4)


def test_glance_qwen3_vl_search_end_to_end(hub_qwen3_vl_dir, sample_photos_dir, tmp_path):
    runner = CliRunner()
    index = tmp_path / "index"
    built = runner.invoke(
        app, ["build-index", str(sample_photos_dir), "--index", str(index), "--encoder", "lite", "-q"]
    )
    assert built.exit_code == 0, built.output
    common = ["search", "a rocket", "--index", str(index), "--reasoner", str(hub_qwen3_vl_dir), "--json", "--k", "5"]
    reason = runner.invoke(app, [*common, "--rerank", "reason", "--show-reasoning", "--max-new-tokens", "8"])
    assert reason.exit_code == 0, reason.output
    data = json.loads(reason.stdout)
    assert data["rerank"] == "reason" and data["candidate_tokens"] == "glance" and len(data["hits"]) == 5
    assert isinstance(data["reasoning"], str) and data["prompt_tokens"] > 0
    score = runner.invoke(app, [*common, "--rerank", "score", "--score-style", "retllm"])
    assert score.exit_code == 0, score.output
    assert all(r["rerank_score"] is not None for r in json.loads(score.stdout)["hits"])


def test_visual_retracing_runs_on_a_dense_qwen3_vl_and_refuses_experts(hub3, candidates):
    from retrv.errors import UsageError
    from retrv.rerank.retracing import RetracingConfig
    from retrv.rerank.scorer import Scorer

    every_layer = RetracingConfig(first_layer=0, last_layer=2, threshold=0.0)
    if hub3.model.config.model_type.endswith("_moe"):
        for config in (every_layer, RetracingConfig()):  # whatever the layers asked for
            with pytest.raises(UsageError, match=r"mixture-of-experts model .*; drop --visual-retracing"):
                Scorer(hub3, retracing=config)
        return
    plain = Scorer(hub3).rerank(Query(text="a rocket"), candidates)
    retraced = Scorer(hub3, retracing=every_layer).rerank(Query(text="a rocket"), candidates)
    assert plain.rerank_scores != retraced.rerank_scores  # the forced retrace changed the forward


def test_qwen3_5_linear_attention_on_the_cpu_is_said_once(hub3):
    from retrv.rerank.checkpoint import reference_kernels_note

    note = reference_kernels_note(hub3)
    if hub3.model.config.model_type.startswith("qwen3_5"):
        assert note is not None and "reference PyTorch code on the CPU" in note
    else:
        assert note is None
