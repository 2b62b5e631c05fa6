"""Detail Inspection on one KV cache: the right tokens go in, the cache matches a fresh prefill, the cap holds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from retrv.icm.features import candidate_tokens
from retrv.items import Item, Query
from retrv.rerank.base import Candidate
from retrv.rerank.decode import (
    INVALID_NOTICE,
    LIMIT_NOTICE,
    UNREADABLE_NOTICE,
    DecodeOptions,
    forward_segment,
    generate_with_inspection,
)
from retrv.rerank.reasoner import Reasoner, ReasonerOptions
from retrv.rerank.sequence import concat_segments

S, E = "<inspection-index-start>", "<inspection-index-end>"


@pytest.fixture(scope="module")
def reasoner(tiny_reasoner_dir):
    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner

    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    torch.manual_seed(0)
    icm = ICM(ICMConfig(hidden_size=loaded.model.config.text_config.hidden_size, num_heads=4)).eval()
    return Reasoner.from_loaded(dataclasses.replace(loaded, icm=icm), ReasonerOptions(max_new_tokens=40))


@pytest.fixture(scope="module")
def candidates(sample_photos_dir):
    photo = lambda name: str(sample_photos_dir / name)  # noqa: E731
    return [
        Candidate(Item("c1", "coffee", "image", image_path=photo("coffee.jpg")), 0.9),
        Candidate(
            Item("c2", "rocket", "image,text", text="a rocket launching into the sky", image_path=photo("rocket.jpg")),
            0.8,
        ),
        Candidate(Item("c3", "text", "text", text="a cup of coffee on a table"), 0.7),
        Candidate(Item("c4", "cat", "image", image_path=photo("chelsea.jpg")), 0.6),
    ]


class Forced:
    """A logits hook that forces `text`'s tokens, then the end of turn; it records every step's logits."""

    def __init__(self, tokenizer, text: str):
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.seen: list[torch.Tensor] = []

    def __call__(self, generated, logits):
        self.seen.append(logits.clone())
        forced = torch.full_like(logits, float("-inf"))
        forced[self.ids[min(len(generated), len(self.ids) - 1)]] = 0.0
        return forced


def _run(reasoner, candidates, text, **options):
    prepared = reasoner.prepare(Query(text="a rocket"), candidates)
    hook = Forced(reasoner.tokenizer, text)
    trace = generate_with_inspection(
        reasoner.model,
        reasoner.tokenizer,
        prepared.prompt,
        prepared.inspect,
        len(candidates),
        DecodeOptions(**{"max_new_tokens": 40, **options}),
        logits_hook=hook,
    )
    return prepared, trace, hook


def test_inspecting_candidate_2_appends_exactly_its_full_tokens(reasoner, candidates):
    tok = reasoner.tokenizer
    _, trace, _ = _run(reasoner, candidates, f"Yes {S}2{E}No<answer>2</answer>")
    assert trace.inspected == [1] and trace.stop_reason == "answer"
    assert [s.kind for s in trace.segments] == ["generated", "inspection", "generated"]
    segment = trace.segments[1]
    expected = candidate_tokens(reasoner.model, reasoner, candidates[1].item)
    n = expected.n_image
    assert n > 0 and len(expected.text_ids) > 0
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    ids = ["<|vision_start|>", *["<|image_pad|>"] * n, "<|vision_end|>"]
    assert segment.token_ids.tolist() == tok.convert_tokens_to_ids(ids) + list(expected.text_ids) + newline
    torch.testing.assert_close(segment.embeds[1 : 1 + n], expected.embeds[:n], rtol=0, atol=0)
    torch.testing.assert_close(
        segment.embeds[n + 2 : n + 2 + len(expected.text_ids)], expected.embeds[n:], rtol=0, atol=0
    )
    # image rows sit on the merged grid: temporal = start, height = start + row, width = start + col
    rows, cols = expected.image_grid
    start = int(segment.position_ids[0, 1])
    grid = segment.position_ids[:, 1 : 1 + n]
    assert grid[0].eq(start).all() and grid[1].tolist() == [start + i // cols for i in range(n)]
    assert grid[2].tolist() == [start + i % cols for i in range(n)]
    assert int(segment.position_ids[0, n + 1]) == start + max(rows, cols)  # <|vision_end|>
    assert trace.injections[0].candidate == 1 and trace.injections[0].after == len(trace.segments[0])


def test_kv_cache_continuation_equals_fresh_prefill(reasoner, candidates):
    from transformers.cache_utils import DynamicCache

    _, trace, hook = _run(reasoner, candidates, f"Yes {S}2{E}No<answer>2</answer>")
    model = reasoner.model
    config = model.config.get_text_config()
    run = len(trace.segments[0])  # the tokens generated up to and including the inspection end
    with torch.no_grad():
        fresh = forward_segment(
            model, DynamicCache(config=config), concat_segments([trace.prompt, *trace.segments[:2]])
        )
        torch.testing.assert_close(hook.seen[run], fresh, rtol=0, atol=1e-4)  # the step right after the injection
        whole = trace.sequence()  # its last row is `</answer>`, generated but never fed
        cut = dataclasses.replace(
            whole, embeds=whole.embeds[:-1], position_ids=whole.position_ids[:, :-1], token_ids=whole.token_ids[:-1]
        )
        last = forward_segment(model, DynamicCache(config=config), cut)
        torch.testing.assert_close(hook.seen[-1], last, rtol=0, atol=1e-4)
    assert hook.seen[run].sub(hook.seen[run - 1]).abs().max() > 1e-3  # not trivially constant


def test_inspection_cap_is_honoured(reasoner, candidates):
    tok = reasoner.tokenizer
    text = f"{S}1{E}{S}3{E}{S}4{E}<answer>3</answer>"
    _, trace, _ = _run(reasoner, candidates, text, max_inspections=2)
    assert trace.inspected == [0, 2]
    assert [(i.kind, i.candidate) for i in trace.injections] == [("inspection", 0), ("inspection", 2), ("notice", None)]
    notice = next(s for s in trace.segments if s.kind == "notice")
    assert tok.decode(notice.token_ids.tolist()) == LIMIT_NOTICE
    # the reranker honours the same cap and still answers
    capped = Reasoner(reasoner.model, tok, reasoner.image_processor, reasoner.icm, ReasonerOptions(max_inspections=2))
    result = capped.rerank(Query(text="a rocket"), candidates, logits_hook=Forced(tok, text))
    assert result.inspected == [0, 2] and result.chosen == 2 and result.order == [2, 0, 1, 3]
    assert result.latency_ms["inspect"] > 0


def test_request_for_a_missing_candidate_gets_a_notice(reasoner, candidates):
    _, trace, _ = _run(reasoner, candidates, f"{S}9{E}<answer>1</answer>")
    assert trace.inspected == []
    assert reasoner.tokenizer.decode(trace.segments[1].token_ids.tolist()) == INVALID_NOTICE
    assert trace.text.endswith("<answer>1</answer>")


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(reasoner, candidates):
    prepared = reasoner.prepare(Query(text="a cat"), candidates)

    def gen(options, seed=None):
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        trace = generate_with_inspection(
            reasoner.model, reasoner.tokenizer, prepared.prompt, prepared.inspect, len(candidates), options, generator=g
        )
        return trace.generated_ids

    sampled = DecodeOptions(max_new_tokens=12, temperature=1.0, stop_at_answer=False)
    assert gen(sampled, 1) == gen(sampled, 1)
    assert gen(sampled, 1) != gen(sampled, 2)
    greedy = gen(DecodeOptions(max_new_tokens=12))
    assert gen(DecodeOptions(max_new_tokens=12, temperature=1.0, top_p=1e-9), 3) == greedy
    assert len(greedy) == 12


def test_inspecting_an_unreadable_candidate_gets_a_notice(reasoner, candidates, tmp_path):

    gone = tmp_path / "gone.jpg"
    hidden, m = reasoner.icm.config.hidden_size, reasoner.icm.config.num_memory_tokens
    row = {"content": torch.zeros(hidden).numpy(), "memory": torch.zeros(m, hidden).numpy()}  # stored: no read needed
    pool = [*candidates[:3], Candidate(Item("x", str(gone), "image", image_path=str(gone)), 0.5, precomputed=row)]
    _, trace = reasoner.trace(
        Query(text="a cat"), pool, logits_hook=Forced(reasoner.tokenizer, f"{S}4{E}<answer>1</answer>")
    )
    assert trace.inspected == [] and [s.kind for s in trace.segments] == ["generated", "notice", "generated"]
    assert reasoner.tokenizer.decode(trace.segments[1].token_ids.tolist()) == UNREADABLE_NOTICE
    assert trace.text.endswith("<answer>1</answer>")


def test_a_forced_answer_continues_the_same_cache(reasoner, candidates):
    from transformers.cache_utils import DynamicCache

    tok = reasoner.tokenizer
    free = tok("Yes No Yes No", add_special_tokens=False)["input_ids"]  # exactly the cap: no answer written
    hook = Forced(tok, "Yes No Yes No3</answer>")
    prepared = reasoner.prepare(Query(text="a rocket"), candidates)
    trace = generate_with_inspection(
        reasoner.model,
        tok,
        prepared.prompt,
        prepared.inspect,
        len(candidates),
        DecodeOptions(max_new_tokens=len(free), force_answer=True),
        logits_hook=hook,
    )
    assert trace.stop_reason == "max_new_tokens" and trace.forced_text == "<answer>3</answer>"
    assert trace.text == "Yes No Yes No\n<answer>3</answer>"
    assert [s.kind for s in trace.segments] == ["generated", "forced", "generated"]
    assert tok.decode(trace.segments[1].token_ids.tolist()) == "\n<answer>"
    whole = trace.sequence()
    start = prepared.prompt.next_position
    assert whole.position_ids[0, len(prepared.prompt) :].tolist() == list(
        range(start, start + len(whole) - len(prepared.prompt))
    )
    # the step after the injection sees what a fresh prefill of everything up to it sees
    with torch.no_grad():
        upto = concat_segments([prepared.prompt, *trace.segments[:2]])
        fresh = forward_segment(reasoner.model, DynamicCache(config=reasoner.model.config.get_text_config()), upto)
    torch.testing.assert_close(hook.seen[len(free)], fresh, rtol=0, atol=1e-4)


def test_an_early_end_of_turn_is_replaced_by_the_forced_answer(reasoner, candidates):
    tok = reasoner.tokenizer
    _, trace, _ = _run(reasoner, candidates, "", force_answer=True)  # the end of turn at once, and after <answer>
    assert trace.stop_reason == "eos" and trace.forced_text in {f"<answer>{i}</answer>" for i in range(1, 5)}
    assert [s.kind for s in trace.segments] == ["forced", "generated"]  # the first end of turn is gone
    assert trace.text == "\n" + trace.forced_text and tok.eos_token_id not in trace.generated_ids
    assert tok.decode(trace.generated_ids) == trace.forced_text[len("<answer>")]  # one digit, decoded
