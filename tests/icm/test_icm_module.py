"""The ICM: shapes, masking, where gradients go, and what depends on the query."""

from __future__ import annotations

import pytest
import torch

from retrv.icm.module import ICM, ICMConfig, pad_tokens

H, M = 32, 4


@pytest.fixture()
def icm() -> ICM:
    torch.manual_seed(0)
    return ICM(ICMConfig(hidden_size=H, num_heads=4, num_layers=2, num_memory_tokens=M)).eval()


def _inputs(batch: int = 3, n: int = 10, q: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(batch, n, H, generator=g)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, 7:] = False  # a shorter candidate
    query = torch.randn(1, q, H, generator=g)
    return full, mask, query


def test_output_shapes(icm):
    full, mask, query = _inputs()
    assert icm.content(full, mask).shape == (3, H)
    memory = icm.memory(full, mask)
    assert memory.shape == (3, M, H)
    assert icm.relation(memory, query).shape == (3, H)
    content, relation = icm(full, mask, query)
    assert content.shape == relation.shape == (3, H)
    assert torch.isfinite(content).all() and torch.isfinite(relation).all()


def test_padding_is_ignored(icm):
    full, mask, _query = _inputs()
    short = full[1:2, :7]
    garbage = full.clone()
    garbage[1, 7:] = 1e3  # padded rows must not matter
    torch.testing.assert_close(icm.content(garbage, mask)[1:2], icm.content(short), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(icm.memory(garbage, mask)[1:2], icm.memory(short), rtol=1e-5, atol=1e-5)


def test_gradients_reach_queries_and_memory_parameters(icm):
    icm.train()
    full, mask, query = _inputs()
    content, relation = icm(full, mask, query)
    (content.pow(2).sum() + relation.pow(2).sum()).backward()
    for name in ("content_pool.queries", "relation_pool.queries", "memory_pool.queries"):
        grad = dict(icm.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    memory_params = [p for n, p in icm.named_parameters() if n.startswith(("memory_pool.", "relation_blocks."))]
    assert memory_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in memory_params)


def test_content_is_query_independent_relation_is_not(icm):
    full, mask, query = _inputs()
    other_query = torch.randn(1, 9, H, generator=torch.Generator().manual_seed(7))
    c1, r1 = icm(full, mask, query)
    c2, r2 = icm(full, mask, other_query)
    assert torch.equal(c1, c2)
    assert (r1 - r2).abs().max() > 1e-3
    # the relation token only sees the candidate through its memory tokens, stored ahead of time
    torch.testing.assert_close(icm.relation(icm.memory(full, mask), query), r1)


def test_query_mask_and_broadcast(icm):
    full, mask, query = _inputs()
    memory = icm.memory(full, mask)
    padded = torch.cat([query, torch.full((1, 3, H), 50.0)], dim=1)
    qmask = torch.tensor([[True] * 6 + [False] * 3])
    torch.testing.assert_close(icm.relation(memory, padded, qmask), icm.relation(memory, query), rtol=1e-5, atol=1e-5)
    per_row = icm.relation(memory, query.expand(3, -1, -1))
    torch.testing.assert_close(per_row, icm.relation(memory, query))


def test_bfloat16(icm):
    full, mask, query = _inputs()
    icm = icm.to(torch.bfloat16)
    content, relation = icm(full.bfloat16(), mask, query.bfloat16())
    assert content.dtype == relation.dtype == torch.bfloat16
    assert torch.isfinite(content.float()).all() and torch.isfinite(relation.float()).all()


def test_pad_tokens_and_config_checks():
    padded, mask = pad_tokens([torch.ones(2, H), torch.ones(5, H)])
    assert padded.shape == (2, 5, H) and mask.sum(1).tolist() == [2, 5]
    assert padded[0, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="divisible"):
        ICMConfig(hidden_size=30, num_heads=4)
    assert ICMConfig(**ICMConfig(hidden_size=H).to_dict()) == ICMConfig(hidden_size=H)
