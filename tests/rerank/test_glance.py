"""Reason mode with any instruct VLM: glance tokens in the prompt, inspections in full on the same cache."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers.cache_utils import DynamicCache
from typer.testing import CliRunner

from retrv.cli.app import app
from retrv.icm.features import GlanceBudget, candidate_tokens, candidate_tokens_batch
from retrv.items import Item, Query
from retrv.rerank.base import Candidate
from retrv.rerank.checkpoint import load_reasoner
from retrv.rerank.decode import DecodeOptions, forward_segment, generate_with_inspection
from retrv.rerank.grammar import parse_answer, parse_inspection_request
from retrv.rerank.reasoner import Reasoner, ReasonerOptions
from retrv.rerank.sequence import concat_segments

S, E = "<inspection-index-start>", "<inspection-index-end>"
LONG_TEXT = "a rocket launching into the sky above a field of sunflowers on a bright summer morning with clouds"


@pytest.fixture(scope="module")
def hub(hub_vlm_dir):
    return load_reasoner(str(hub_vlm_dir), device="cpu")


@pytest.fixture(scope="module")
def candidates(sample_photos_dir):
    photo = lambda name: str(sample_photos_dir / name)  # noqa: E731
    return [
        Candidate(Item("c1", "coffee", "image", image_path=photo("coffee.jpg")), 0.9),
        Candidate(Item("c2", "rocket", "image,text", text=LONG_TEXT, image_path=photo("rocket.jpg")), 0.8),
        Candidate(Item("c3", "text", "text", text="a cup of coffee on a table"), 0.7),
        Candidate(Item("c4", "cat", "image", image_path=photo("chelsea.jpg")), 0.6),
    ]


class Forced:
    """Forces `text`'s tokens (as this tokenizer writes them: the tags are plain text to a hub model), then the
    end of turn; records every step's logits."""

    def __init__(self, tokenizer, text: str):
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.seen: list[torch.Tensor] = []

    def __call__(self, generated, logits):
        self.seen.append(logits.clone())
        forced = torch.full_like(logits, float("-inf"))
        forced[self.ids[min(len(generated), len(self.ids) - 1)]] = 0.0
        return forced


@pytest.mark.parametrize(("image_tokens", "square"), [(1, 1), (4, 4), (9, 9)])
def test_glance_budget_yields_the_documented_number_of_tokens(hub, tmp_path, image_tokens, square):
    picture = tmp_path / "square.png"
    Image.new("RGB", (600, 600), (200, 30, 30)).save(picture)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1200, 300), (30, 30, 200)).save(wide)
    budget = GlanceBudget(image_tokens=image_tokens, text_tokens=16).as_token_budget()
    items = [
        Item("s", "s", "image,text", text=LONG_TEXT, image_path=str(picture)),
        Item("w", "w", "image", image_path=str(wide)),
    ]
    square_tokens, wide_tokens = candidate_tokens_batch(hub.model, hub, items, budget)
    assert square_tokens.n_image == square  # a square image fills the budget exactly
    assert 1 <= wide_tokens.n_image <= max(image_tokens, 2)  # a thin one at most that many (one patch row at least)
    assert len(square_tokens.text_ids) == 16 and len(hub.tokenizer(LONG_TEXT)["input_ids"]) > 16
    full = candidate_tokens(hub.model, hub, items[0])
    assert full.n_image >= square_tokens.n_image and len(full.text_ids) > 16  # inspection reads it whole


def test_glance_forced_inspection_appends_full_tokens_and_the_cache_equals_a_fresh_prefill(hub, candidates):
    reasoner = Reasoner.from_loaded(hub, ReasonerOptions(max_new_tokens=60))
    assert reasoner.candidate_tokens == "glance" and reasoner.precomputed_table is None
    prepared = reasoner.prepare(Query(text="a rocket"), candidates)
    image_pad = hub.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    glance_images = int((prepared.prompt.token_ids == image_pad).sum())
    assert 3 <= glance_images <= 3 * 4  # three images, at most four glance tokens each
    hook = Forced(hub.tokenizer, f"Maybe {S}2{E} yes <answer>2</answer>")
    trace = generate_with_inspection(
        reasoner.model,
        reasoner.tokenizer,
        prepared.prompt,
        prepared.inspect,
        len(candidates),
        DecodeOptions(max_new_tokens=60),
        special=reasoner.special,
        logits_hook=hook,
    )
    assert trace.inspected == [1] and trace.stop_reason == "answer"
    assert [s.kind for s in trace.segments] == ["generated", "inspection", "generated"]
    full = candidate_tokens(hub.model, hub, candidates[1].item)  # the full-resolution tokens, not the glance
    injected = trace.segments[1]
    assert int((injected.token_ids == image_pad).sum()) == full.n_image > 4
    torch.testing.assert_close(injected.embeds[1 : 1 + full.n_image], full.embeds[: full.n_image], rtol=0, atol=0)
    run = len(trace.segments[0])
    config = reasoner.model.config.get_text_config()
    with torch.no_grad():
        fresh = forward_segment(
            reasoner.model, DynamicCache(config=config), concat_segments([trace.prompt, *trace.segments[:2]])
        )
    torch.testing.assert_close(hook.seen[run], fresh, rtol=0, atol=1e-4)
    assert parse_answer(trace.text, len(candidates), reasoner.special).index == 1


def test_glance_both_tag_spellings_parse(hub, reasoner_checkpoint):
    """A hub model writes the tags as several plain-text tokens, a retrv checkpoint as one special token each:
    decoded, both read the same."""
    checkpoint = load_reasoner(str(reasoner_checkpoint), device="cpu")
    text = f"look {S}3{E}"
    for loaded in (hub, checkpoint):
        ids = loaded.tokenizer(text + "<answer>3</answer>", add_special_tokens=False)["input_ids"]
        decoded = loaded.tokenizer.decode(ids, skip_special_tokens=False)
        assert parse_answer(decoded, 4).index == 2
        assert parse_inspection_request(decoded[: decoded.index(E) + len(E)], 4).index == 2
    plain = len(hub.tokenizer(S, add_special_tokens=False)["input_ids"])
    special = len(checkpoint.tokenizer(S, add_special_tokens=False)["input_ids"])
    assert plain > 1 and special == 1


def test_glance_search_end_to_end_with_a_hub_layout_model(hub_vlm_dir, sample_photos_dir, tmp_path):
    runner = CliRunner()
    index = tmp_path / "index"
    built = runner.invoke(
        app, ["build-index", str(sample_photos_dir), "--index", str(index), "--encoder", "lite", "-q"]
    )
    assert built.exit_code == 0, built.output
    result = runner.invoke(
        app,
        [
            "search",
            "a rocket",
            "--index",
            str(index),
            "--rerank",
            "reason",
            "--reasoner",
            str(hub_vlm_dir),
            "--show-reasoning",
            "--json",
            "--k",
            "7",
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rerank"] == "reason" and data["candidate_tokens"] == "glance"
    assert isinstance(data["reasoning"], str) and data["prompt_tokens"] > 0
    full = runner.invoke(
        app,
        [
            "search",
            "a rocket",
            "--index",
            str(index),
            "--rerank",
            "reason",
            "--reasoner",
            str(hub_vlm_dir),
            "--candidate-tokens",
            "full",
            "--json",
            "--k",
            "7",
            "--max-new-tokens",
            "8",
        ],
    )
    assert full.exit_code == 0 and json.loads(full.stdout)["candidate_tokens"] == "full"
