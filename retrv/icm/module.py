"""The Information Compression Module (Retrv-R1): a candidate becomes two soft tokens.

- content token: one learnable query attends (through `num_layers` cross-attention blocks) over the
  candidate's full tokens. Query-independent, so `retrv compress` precomputes it.
- memory tokens: `num_memory_tokens` learnable queries pooled the same way over the full tokens.
  Also query-independent and precomputed; they are what the relation token is made from.
- relation token: the memory tokens cross-attend to the query's tokens (`num_layers` blocks), then one
  learnable query pools them into a single token. Computed at search time.

Why the relation token is made from M memory tokens and not, as the paper writes it, from the candidate's full
tokens attending to the query: it is the one part computed per (query, candidate) at search time, and from
memory tokens it needs only what the index stores (M rows per item) and costs K·M·Q attention, while from full
tokens every candidate's image would go through the vision tower at every search (or the index would store
~256 rows per image instead of M + 1). The memory tokens are trained to keep what the relation needs.

All tensors are in the reasoner LLM's hidden size, so the tokens go straight into `inputs_embeds`.
Masks are boolean, True where a token is real (False = padding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ICMConfig:
    hidden_size: int  # the reasoner LLM's hidden size (input and output of every token)
    num_heads: int = 8
    num_layers: int = 2  # cross-attention blocks in each pool and in the relation stack
    num_memory_tokens: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ICM hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_memory_tokens < 1 or self.num_layers < 1:
            raise ValueError("ICM needs num_memory_tokens >= 1 and num_layers >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


class CrossAttention(nn.Module):
    def __init__(self, config: ICMConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        B, Lq, H = x.shape
        Lk = context.shape[1]
        q = self.q_proj(x).view(B, Lq, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv_proj(context).view(B, Lk, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(B, Lq, H))


class CrossBlock(nn.Module):
    """Pre-norm transformer block whose attention reads from a separate context."""

    def __init__(self, config: ICMConfig):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.norm_x = nn.LayerNorm(config.hidden_size)
        self.norm_context = nn.LayerNorm(config.hidden_size)
        self.attn = CrossAttention(config)
        self.norm_mlp = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.hidden_size),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm_x(x), self.norm_context(context), context_mask)
        return x + self.mlp(self.norm_mlp(x))


class AttentionPool(nn.Module):
    """`num_queries` learnable vectors that read a token sequence through `num_layers` cross-attention blocks."""

    def __init__(self, config: ICMConfig, num_queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, config.hidden_size) * 0.02)
        self.blocks = nn.ModuleList(CrossBlock(config) for _ in range(config.num_layers))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.queries.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, tokens, mask)
        return x  # (B, num_queries, H)


class OutputHead(nn.Module):
    """Maps pooled vectors to the scale of the LLM's input embeddings (learned, since every LLM differs)."""

    def __init__(self, config: ICMConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class ICM(nn.Module):
    def __init__(self, config: ICMConfig):
        super().__init__()
        self.config = config
        self.content_pool = AttentionPool(config, 1)
        self.content_head = OutputHead(config)
        self.memory_pool = AttentionPool(config, config.num_memory_tokens)
        self.relation_blocks = nn.ModuleList(CrossBlock(config) for _ in range(config.num_layers))
        self.relation_pool = AttentionPool(config, 1)
        self.relation_head = OutputHead(config)

    def content(self, full_tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, H) full tokens -> (B, H) content token."""
        return self.content_head(self.content_pool(full_tokens, mask))[:, 0]

    def memory(self, full_tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, H) full tokens -> (B, M, H) memory tokens."""
        return self.memory_pool(full_tokens, mask)

    def relation(
        self, memory: torch.Tensor, query_tokens: torch.Tensor, query_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, M, H) memory tokens x (B or 1, Q, H) query tokens -> (B, H) relation token."""
        if query_tokens.shape[0] != memory.shape[0]:
            query_tokens = query_tokens.expand(memory.shape[0], -1, -1)
            if query_mask is not None:
                query_mask = query_mask.expand(memory.shape[0], -1)
        x = memory.to(query_tokens.dtype)
        for block in self.relation_blocks:
            x = block(x, query_tokens, query_mask)
        return self.relation_head(self.relation_pool(x))[:, 0]

    def forward(
        self,
        full_tokens: torch.Tensor,
        mask: torch.Tensor | None,
        query_tokens: torch.Tensor,
        query_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both soft tokens of B candidates for one query: ((B, H) content, (B, H) relation)."""
        memory = self.memory(full_tokens, mask)
        return self.content(full_tokens, mask), self.relation(memory, query_tokens, query_mask)


def pad_tokens(token_lists: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (n_i, H) tensors into (B, N, H) plus a (B, N) bool mask (True = real)."""
    if not token_lists:
        raise ValueError("pad_tokens needs at least one tensor")
    longest = max(t.shape[0] for t in token_lists)
    first = token_lists[0]
    padded = first.new_zeros(len(token_lists), longest, first.shape[-1])
    mask = torch.zeros(len(token_lists), longest, dtype=torch.bool, device=first.device)
    for i, t in enumerate(token_lists):
        padded[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return padded, mask
