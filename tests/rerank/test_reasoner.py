"""The `reason` reranker end to end on the tiny Qwen2.5-VL: answers, fallbacks, ICM rows, the w/o-ICM prompt."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from retrv.errors import RetrvError
from retrv.icm.features import candidate_tokens_batch, query_tokens
from retrv.items import Item, Query
from retrv.rerank.base import Candidate, Reranker
from retrv.rerank.reasoner import Reasoner, ReasonerOptions


@pytest.fixture(scope="module")
def loaded(tiny_reasoner_dir):
    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner

    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    torch.manual_seed(0)
    icm = ICM(ICMConfig(hidden_size=loaded.model.config.text_config.hidden_size, num_heads=4, num_memory_tokens=3))
    return dataclasses.replace(loaded, icm=icm.eval())


@pytest.fixture(scope="module")
def reasoner(loaded):
    return Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=6))


@pytest.fixture(scope="module")
def candidates(sample_photos_dir):
    photo = lambda name: str(sample_photos_dir / name)  # noqa: E731
    return [
        Candidate(Item("i1", "coffee.jpg", "image", image_path=photo("coffee.jpg")), 0.9),
        Candidate(Item("t1", "note", "text", text="a photo of a cat"), 0.8),
        Candidate(Item("i2", "chelsea.jpg", "image", image_path=photo("chelsea.jpg")), 0.7),
        Candidate(Item("t2", "note2", "text", text="a rocket launching into the sky"), 0.6),
    ]


def forced(tokenizer, text: str):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def hook(generated, logits):
        out = torch.full_like(logits, float("-inf"))
        out[ids[min(len(generated), len(ids) - 1)]] = 0.0
        return out

    return hook


def test_forced_answer_ranks_that_candidate_first(reasoner, candidates):
    assert isinstance(reasoner, Reranker) and reasoner.mode == "reason"
    result = reasoner.rerank(
        Query(text="a cat"), candidates, logits_hook=forced(reasoner.tokenizer, "<answer>3</answer>")
    )
    assert result.chosen == 2 and result.order == [2, 0, 1, 3] and result.fallback is None
    assert result.reasoning == "<answer>3</answer>" and result.generated_tokens == 3
    assert result.scores == [0.75, 0.5, 1.0, 0.25] and result.rerank_scores == [0.0, 0.0, 1.0, 0.0]
    assert result.inspected == [] and result.prompt_tokens > 4 * 2
    assert {"prepare", "prefill", "decode", "inspect", "total"} <= set(result.latency_ms)


def test_image_query_and_greedy_output_is_a_valid_result(loaded, reasoner, candidates, sample_photos_dir):
    result = reasoner.rerank(Query(text="a cat", image=sample_photos_dir / "chelsea.jpg"), candidates)
    assert sorted(result.order) == [0, 1, 2, 3] and result.generated_tokens <= 6
    # a random tiny model writes no answer: coarse order, flagged
    assert result.chosen is None and result.order == [0, 1, 2, 3] and result.fallback and not result.forced_answer
    forcing = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=6, force_answer=True))
    forced = forcing.rerank(Query(text="a cat", image=sample_photos_dir / "chelsea.jpg"), candidates)
    assert forced.forced_answer and forced.fallback is None and forced.chosen in range(4)  # made to name one
    assert forced.reasoning.endswith(f"\n<answer>{forced.chosen + 1}</answer>") and forced.generated_tokens <= 6 + 1


@pytest.mark.parametrize(
    ("text", "max_new_tokens", "reason"),
    [
        ("", 6, "no answer"),  # ends the turn at once
        ("<answer>9</answer>", 6, "answer 9 out of range 1..4"),
        ("<answer>2", 6, "unclosed <answer>"),
        ("<answer>x</answer>", 6, "answer 'x' is not a candidate number"),
        ("Yes No Yes No Yes No Yes", 4, "max_new_tokens (4) reached: no answer"),
        ("Candidate <answer>2", 3, "max_new_tokens (3) reached: unclosed <answer>"),
    ],
)
def test_malformed_output_falls_back_to_coarse_order(loaded, candidates, text, max_new_tokens, reason):
    reasoner = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=max_new_tokens))
    result = reasoner.rerank(Query(text="a cat"), candidates, logits_hook=forced(reasoner.tokenizer, text))
    assert result.order == [0, 1, 2, 3] and result.chosen is None
    assert result.fallback == reason
    # no rerank happened: the coarse scores stand, none is made up from rank
    assert result.scores == [c.coarse_score for c in candidates]
    assert result.rerank_scores == [None] * 4 and not result.forced_answer


def scripted(tokenizer, *texts: str):
    """A hook that forces the tokens of `texts`, one per call, whatever was generated or injected in between."""
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    calls = itertools.count()

    def hook(generated, logits):
        out = torch.full_like(logits, float("-inf"))
        out[ids[min(next(calls), len(ids) - 1)]] = 0.0
        return out

    return hook


@pytest.mark.parametrize(
    ("free", "max_new_tokens", "answer"),
    [
        ("Yes No Yes No", 4, "3"),  # out of tokens mid-sentence (4 tokens)
        ("<|im_end|>", 6, "4"),  # ends its turn without answering
        ("Candidate <answer>", 3, "2"),  # out of tokens inside an unclosed answer (3 tokens)
        ("<answer>x</answer>", 9, "1"),  # an answer that names no candidate
        ("3</answer>", 9, "4"),  # an answer without its opening tag
    ],
)
def test_an_unanswered_reasoner_is_made_to_answer(loaded, candidates, free, max_new_tokens, answer):
    reasoner = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=max_new_tokens, force_answer=True))
    result = reasoner.rerank(
        Query(text="a cat"), candidates, logits_hook=scripted(reasoner.tokenizer, free, answer, ".")
    )
    chosen = int(answer) - 1
    assert result.forced_answer and result.chosen == chosen and result.fallback is None
    assert result.reasoning.endswith(f"\n<answer>{answer}</answer>")
    assert result.order == [chosen] + [i for i in range(4) if i != chosen]


def ranked(tokenizer, *preferences: list[str]):
    """A hook whose n-th call scores the tokens of preferences[n] 0, -1, -2, ... and every other token -inf."""
    calls = itertools.count()

    def hook(generated, logits):
        wanted = preferences[min(next(calls), len(preferences) - 1)]
        out = torch.full_like(logits, float("-inf"))
        for rank, text in enumerate(wanted):
            out[tokenizer.convert_tokens_to_ids(text)] = -float(rank)
        return out

    return hook


@pytest.mark.parametrize(
    ("preferences", "k", "chosen"),
    [
        ([["<|im_end|>"], ["9", "2", "3"]], 4, 1),  # 9 is no candidate: the likeliest that is, 2
        ([["<|im_end|>"], ["1"], ["1", "."]], 12, 10),  # 1, then 1 again rather than stopping: 11
        ([["<|im_end|>"], ["1"], [".", "1"]], 12, 0),  # 1, then rather stop than write another digit: 1
        ([["<|im_end|>"], ["1"], ["3", "0", "."]], 12, 9),  # 13 is out of range: 10
    ],
)
def test_a_forced_answer_is_the_likeliest_candidate_number(loaded, preferences, k, chosen):
    items = [Candidate(Item(f"t{i}", f"note {i}", "text", text=f"note {i}"), 1.0 - i / 100) for i in range(k)]
    reasoner = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=6, force_answer=True))
    result = reasoner.rerank(Query(text="a note"), items, logits_hook=ranked(reasoner.tokenizer, *preferences))
    assert result.forced_answer and result.chosen == chosen and result.fallback is None
    assert result.reasoning == f"\n<answer>{chosen + 1}</answer>"


def test_a_written_answer_is_not_forced(loaded, candidates):
    reasoner = Reasoner.from_loaded(loaded, ReasonerOptions(max_new_tokens=6, force_answer=True))
    result = reasoner.rerank(
        Query(text="a cat"), candidates, logits_hook=scripted(reasoner.tokenizer, "<answer>2</answer>", "3.")
    )
    assert not result.forced_answer and result.chosen == 1 and result.reasoning == "<answer>2</answer>"


def test_stored_icm_rows_are_used_and_match_on_the_fly(reasoner, loaded, candidates):
    query = Query(text="a cat")
    icm = loaded.icm
    full = candidate_tokens_batch(loaded.model, loaded, [c.item for c in candidates])
    stored = []
    with torch.no_grad():
        for c, tokens in zip(candidates, full, strict=True):
            x = tokens.embeds[None]
            row = {"content": icm.content(x)[0].numpy(), "memory": icm.memory(x)[0].numpy()}
            stored.append(dataclasses.replace(c, precomputed=row))
    on_the_fly = reasoner.prepare(query, candidates).prompt
    from_index = reasoner.prepare(query, stored).prompt
    torch.testing.assert_close(from_index.embeds, on_the_fly.embeds, rtol=1e-5, atol=1e-5)
    assert torch.equal(from_index.position_ids, on_the_fly.position_ids)

    # the soft rows really come from the stored tokens: candidate 1's content row, then its relation row
    icm_id = loaded.tokenizer.convert_tokens_to_ids("<|icm|>")
    soft_rows = (from_index.token_ids == icm_id).nonzero().flatten().tolist()
    assert len(soft_rows) == 2 * len(candidates)
    zeroed = {"content": np.zeros_like(stored[0].precomputed["content"]), "memory": stored[0].precomputed["memory"]}
    changed = reasoner.prepare(query, [dataclasses.replace(stored[0], precomputed=zeroed), *stored[1:]]).prompt
    assert changed.embeds[soft_rows[0]].abs().sum() == 0
    torch.testing.assert_close(changed.embeds[soft_rows[1]], from_index.embeds[soft_rows[1]])
    q = query_tokens(loaded.model, loaded, query)
    with torch.no_grad():
        relation = icm.relation(torch.as_tensor(stored[0].precomputed["memory"])[None], q.embeds[None])[0]
    torch.testing.assert_close(from_index.embeds[soft_rows[1]], relation, rtol=1e-5, atol=1e-5)


def test_stored_rows_of_the_wrong_shape_are_refused(reasoner, candidates):
    bad = dataclasses.replace(
        candidates[0], precomputed={"content": np.zeros(8, np.float32), "memory": np.zeros((3, 8), np.float32)}
    )
    with pytest.raises(RetrvError, match="retrv compress"):
        reasoner.prepare(Query(text="a cat"), [bad, *candidates[1:]])


def test_without_icm_every_candidate_is_in_the_prompt_in_full(loaded, candidates):
    with pytest.raises(RetrvError, match="ICM"):
        Reasoner(loaded.model, loaded.tokenizer, loaded.image_processor, None, ReasonerOptions(candidate_tokens="icm"))
    assert Reasoner(loaded.model, loaded.tokenizer, loaded.image_processor, None).candidate_tokens == "glance"
    plain = Reasoner(
        loaded.model,
        loaded.tokenizer,
        loaded.image_processor,
        None,
        ReasonerOptions(max_new_tokens=6, candidate_tokens="full"),
    )
    prompt = plain.prepare(Query(text="a cat"), candidates).prompt
    full = candidate_tokens_batch(loaded.model, loaded, [c.item for c in candidates])
    convert = loaded.tokenizer.convert_tokens_to_ids
    assert int((prompt.token_ids == convert("<|icm|>")).sum()) == 0
    assert int((prompt.token_ids == convert("<|image_pad|>")).sum()) == full[0].n_image + full[2].n_image
    image_rows = (prompt.token_ids == convert("<|image_pad|>")).nonzero().flatten()
    torch.testing.assert_close(prompt.embeds[image_rows[: full[0].n_image]], full[0].embeds)
    result = plain.rerank(Query(text="a cat"), candidates, logits_hook=forced(loaded.tokenizer, "<answer>4</answer>"))
    assert result.order == [3, 0, 1, 2] and result.prompt_tokens == len(prompt)
