"""The reasoner's sequence: prompt layout, M-RoPE positions equal Qwen's own, gradients, batching."""

from __future__ import annotations

import pytest
import torch

from retrv.icm.features import query_tokens
from retrv.items import Query
from retrv.rerank.sequence import (
    PROMPT_VERSION,
    SpecialTokens,
    batch_segments,
    build_prompt,
    system_prompt,
    text_segment,
)


@pytest.fixture(scope="module")
def loaded(tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner

    return load_reasoner(str(tiny_reasoner_dir), device="cpu")


def _prompt(loaded, query, k=3, seed=0):
    soft = torch.randn(k, 2, loaded.model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(seed))
    q = query_tokens(loaded.model, loaded, query)
    return build_prompt(loaded.tokenizer, loaded.model.get_input_embeddings(), q, soft_tokens=soft), soft, q


def test_prompt_layout_and_soft_rows(loaded):
    prompt, soft, _ = _prompt(loaded, Query(text="a cat"))
    text = loaded.tokenizer.decode(prompt.token_ids.tolist())
    expected = (
        f"<|im_start|>system\n{system_prompt(SpecialTokens())}<|im_end|>\n<|im_start|>user\nQuery: a cat\nCandidates:\n"
        "[1] <|icm|><|icm|>\n[2] <|icm|><|icm|>\n[3] <|icm|><|icm|>\n"
        "Which candidate best matches the query?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == expected and PROMPT_VERSION == 1
    rows = (prompt.token_ids == loaded.tokenizer.convert_tokens_to_ids("<|icm|>")).nonzero().flatten()
    assert torch.equal(prompt.embeds[rows], soft.reshape(-1, soft.shape[-1]))
    assert prompt.position_ids[0].tolist() == list(range(len(prompt)))  # text only: 1-D positions in all rows
    assert prompt.next_position == len(prompt)


def test_positions_with_an_image_equal_qwen_rope_index(loaded, sample_photos_dir):
    prompt, _, q = _prompt(loaded, Query(text="a cat", image=sample_photos_dir / "china.jpg"))
    image_id = loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = prompt.token_ids[None]
    rows, cols = q.image_grid
    reference, _ = loaded.model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == image_id).int(), image_grid_thw=torch.tensor([[1, rows * 2, cols * 2]])
    )
    assert torch.equal(prompt.position_ids, reference[:, 0])
    tail = text_segment(loaded.tokenizer, loaded.model.get_input_embeddings(), "Yes", prompt.next_position)
    assert int(tail.position_ids[0, 0]) == int(reference.max()) + 1


def test_gradients_flow_from_soft_tokens_to_logits(loaded):
    soft = torch.randn(2, 2, loaded.model.config.text_config.hidden_size, requires_grad=True)
    q = query_tokens(loaded.model, loaded, Query(text="a cat"))
    prompt = build_prompt(loaded.tokenizer, loaded.model.get_input_embeddings(), q, soft_tokens=soft)
    out = loaded.model.model.language_model(
        inputs_embeds=prompt.embeds[None], position_ids=prompt.position_ids[:, None]
    )
    loaded.model.lm_head(out.last_hidden_state[0, -1]).logsumexp(-1).backward()
    assert soft.grad is not None and soft.grad.abs().sum(-1).gt(0).all()


def test_batched_right_padded_forward_matches_single(loaded, sample_photos_dir):
    a, _, _ = _prompt(loaded, Query(text="a cat", image=sample_photos_dir / "flower.jpg"), k=2)
    b, _, _ = _prompt(loaded, Query(text="a rocket"), k=4, seed=1)
    embeds, positions, mask = batch_segments([a, b])
    assert embeds.shape[:2] == mask.shape == (2, max(len(a), len(b))) and positions.shape[0] == 3
    lm, head = loaded.model.model.language_model, loaded.model.lm_head
    with torch.no_grad():
        batched = head(lm(inputs_embeds=embeds, position_ids=positions, attention_mask=mask).last_hidden_state)
        for i, s in enumerate((a, b)):
            single = head(lm(inputs_embeds=s.embeds[None], position_ids=s.position_ids[:, None]).last_hidden_state)[0]
            torch.testing.assert_close(batched[i, : len(s)], single, rtol=1e-4, atol=1e-4)


def test_build_prompt_needs_one_kind_of_candidate(loaded):
    q = query_tokens(loaded.model, loaded, Query(text="a cat"))
    with pytest.raises(ValueError, match="exactly one"):
        build_prompt(loaded.tokenizer, loaded.model.get_input_embeddings(), q)


def test_bare_prompt_is_the_query_and_the_candidates_only(loaded):
    soft = torch.randn(3, 2, loaded.model.config.text_config.hidden_size)
    q = query_tokens(loaded.model, loaded, Query(text="a cat"))
    embed = loaded.model.get_input_embeddings()
    bare = build_prompt(loaded.tokenizer, embed, q, soft_tokens=soft, style="bare")
    chat = build_prompt(loaded.tokenizer, embed, q, soft_tokens=soft)
    assert loaded.tokenizer.decode(bare.token_ids.tolist()) == (
        "<|im_start|>user\nCandidates:\n1<|icm|><|icm|>2<|icm|><|icm|>3<|icm|><|icm|>\nQuery: a cat"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    rows = (bare.token_ids == loaded.tokenizer.convert_tokens_to_ids("<|icm|>")).nonzero().flatten()
    assert torch.equal(bare.embeds[rows], soft.reshape(-1, soft.shape[-1]))
    assert len(bare) < len(chat) - 40  # the system prompt, instruction and separators are gone
    with pytest.raises(ValueError, match="prompt style"):
        build_prompt(loaded.tokenizer, embed, q, soft_tokens=soft, style="terse")
