"""Reason mode (Retrv-R1): the reasoner reads K compressed candidates, thinks, inspects, answers.

`Reasoner.prepare` builds the prompt (two ICM soft tokens per candidate, or every candidate's full tokens);
`rerank/decode.py` decodes it, serving inspections on the same KV cache.
`Reasoner.rerank` puts the chosen candidate first and keeps the others in coarse (input) order.
Malformed output never raises: the coarse order comes back with `RerankResult.fallback` saying why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retrv.errors import RetrvError, UsageError
from retrv.icm.features import (
    CandidateTokens,
    GlanceBudget,
    TokenBudget,
    candidate_tokens_batch,
    full_tokens_batch,
    pixels_per_image_token,
    query_tokens,
    unwrap_model,
)
from retrv.rerank.base import Candidate, RerankResult
from retrv.rerank.decode import DecodeOptions, Trace, generate_with_inspection
from retrv.rerank.grammar import parse_answer
from retrv.rerank.sequence import CANDIDATE_TOKENS, Segment, SpecialTokens, build_prompt

if TYPE_CHECKING:
    import numpy as np
    import torch

    from retrv.icm.module import ICM
    from retrv.items import Item, Query
    from retrv.rerank.checkpoint import LoadedReasoner


@dataclass
class ReasonerOptions:
    max_new_tokens: int = 512
    max_inspections: int = 5
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # How candidates enter the prompt (`sequence.CANDIDATE_TOKENS`): "icm" (two soft tokens each, a checkpoint
    # with ICM weights), "glance" (each at `glance`'s small budget: any Qwen-VL-family instruct VLM, no
    # training), "full" (every token: the paper's "w/o ICM"); None picks icm when the reasoner has an ICM, else
    # glance.
    candidate_tokens: str | None = None
    glance: GlanceBudget = field(default_factory=GlanceBudget)
    budget: TokenBudget = field(default_factory=TokenBudget)  # full tokens: inspections, the query, "full"
    force_answer: bool = False  # True: a decode without a usable answer is made to name a candidate

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(
            self.max_new_tokens, self.max_inspections, self.temperature, self.top_p, force_answer=self.force_answer
        )


@dataclass
class PreparedPrompt:
    """A rerank's prompt and the way to fetch a candidate's full tokens (computed once, then kept)."""

    prompt: Segment
    num_candidates: int
    inspect: Callable[[int], CandidateTokens]
    latency_ms: dict[str, float] = field(default_factory=dict)


ICM_TABLE_PREFIX = "icm_"
# The decode loop feeds `model.model.language_model` directly with 3-row M-RoPE positions (`rerank/sequence.py`)
# and, for Qwen3-VL, the vision tower's DeepStack features; glance tokens need the family's native dynamic
# resolution.
REASON_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


class Reasoner:
    """The `reason` reranker. Candidates are 1-indexed in the prompt; results use 0-based positions.

    With ICM, each candidate's content and memory tokens are query-independent: `precompute` makes them and
    the index keeps them in the side table `precomputed_table` (`icm_<checkpoint id>`), see `retrv.precomputed`.
    """

    mode = "reason"
    calibrated = False  # its choice is a pick, not a probability: --min-score applies to the coarse score

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        icm: ICM | None = None,
        options: ReasonerOptions | None = None,
        special: SpecialTokens = SpecialTokens(),
        prompt_style: str = "chat",
        checkpoint_id: str | None = None,
    ):
        self.model, self.tokenizer, self.image_processor, self.icm = model, tokenizer, image_processor, icm
        options = options or ReasonerOptions()
        if options.candidate_tokens is None:
            options = dataclasses.replace(options, candidate_tokens="icm" if icm is not None else "glance")
        if options.candidate_tokens not in CANDIDATE_TOKENS:
            raise UsageError(
                f"candidate tokens must be one of {', '.join(CANDIDATE_TOKENS)}, got {options.candidate_tokens!r}"
            )
        self.options = options
        self.special, self.prompt_style = special, prompt_style
        self.checkpoint_id = checkpoint_id
        if self.candidate_tokens == "icm" and icm is None:
            raise UsageError(
                "--candidate-tokens icm needs a reasoner checkpoint with ICM weights (retrv train icm); "
                "use glance (any Qwen-VL-family instruct VLM) or full",
                setting="candidate_tokens",
            )
        model_type = getattr(unwrap_model(model).config, "model_type", "")
        if model_type not in REASON_MODEL_TYPES:
            raise UsageError(
                "reason mode drives the Qwen-VL text stack with its M-RoPE positions and dynamic resolution (model "
                f"types {', '.join(REASON_MODEL_TYPES)}); this reasoner is {model_type!r}: use --rerank score, which "
                "reads any instruct VLM"
            )
        hidden = unwrap_model(model).get_input_embeddings().weight.shape[-1]
        if icm is not None and icm.config.hidden_size != hidden:
            raise RetrvError(
                f"the ICM makes {icm.config.hidden_size}-d tokens but the reasoner's hidden size is {hidden}"
            )

    @classmethod
    def from_loaded(cls, loaded: LoadedReasoner, options: ReasonerOptions | None = None) -> Reasoner:
        special = SpecialTokens.from_mapping(loaded.config.special_tokens)
        return cls(
            loaded.model,
            loaded.tokenizer,
            loaded.image_processor,
            loaded.icm,
            options,
            special,
            loaded.config.prompt_style,
            loaded.checkpoint_id,
        )

    @classmethod
    def load(
        cls, spec: str, *, device: str = "auto", trust_remote_code: bool = False, options: ReasonerOptions | None = None
    ) -> Reasoner:
        from retrv.rerank.checkpoint import load_reasoner

        options = options or ReasonerOptions()
        require_icm = options.candidate_tokens == "icm"
        loaded = load_reasoner(spec, device=device, trust_remote_code=trust_remote_code, require_icm=require_icm)
        return cls.from_loaded(loaded, options)

    @property
    def candidate_tokens(self) -> str:
        return str(self.options.candidate_tokens)

    @property
    def device(self) -> str:
        return str(unwrap_model(self.model).get_input_embeddings().weight.device)

    @property
    def precomputed_table(self) -> str | None:
        """The index side table of this checkpoint's ICM rows (None without ICM or a checkpoint id)."""
        if self.candidate_tokens != "icm" or self.icm is None or not self.checkpoint_id:
            return None
        return f"{ICM_TABLE_PREFIX}{self.checkpoint_id}"

    def precompute(self, items: list[Item]) -> dict[str, np.ndarray]:
        """Content (B, H) and memory (B, M, H) tokens of `items`, float32 when the reasoner runs float32 (exactly
        what search would compute), else float16 (half the disk)."""
        import numpy as np
        import torch

        from retrv.icm.module import pad_tokens

        if self.icm is None:
            raise RetrvError("this reasoner has no ICM: nothing to precompute")
        with torch.inference_mode():
            tokens = full_tokens_batch(self.model, self, list(items), self.options.budget)
            padded, mask = pad_tokens(tokens)
            param = next(self.icm.parameters())
            padded, mask = padded.to(device=param.device, dtype=param.dtype), mask.to(param.device)
            content = self.icm.content(padded, mask)
            memory = self.icm.memory(padded, mask)
        store_dtype = np.float32 if content.dtype == torch.float32 else np.float16
        return {
            "content": content.float().cpu().numpy().astype(store_dtype),
            "memory": memory.float().cpu().numpy().astype(store_dtype),
        }

    def _soft_tokens(
        self,
        query: CandidateTokens,
        candidates: list[Candidate],
        full: Callable[[list[int]], None],
        cache: dict[int, CandidateTokens],
    ) -> torch.Tensor:
        """(K, 2, H): [content, relation] per candidate, from stored ICM rows or computed from full tokens."""
        import torch

        from retrv.icm.module import pad_tokens

        icm = self.icm
        assert icm is not None, "soft tokens need the ICM"
        weight = next(icm.parameters())
        hidden = icm.config.hidden_size
        content: list[torch.Tensor | None] = [None] * len(candidates)
        memory: list[torch.Tensor | None] = [None] * len(candidates)
        for i, cand in enumerate(candidates):
            row = cand.precomputed
            if row is None:
                continue
            c, m = torch.as_tensor(row["content"]), torch.as_tensor(row["memory"])
            if c.shape != (hidden,) or m.shape != (icm.config.num_memory_tokens, hidden):
                raise RetrvError(
                    f"candidate {cand.item.id}: stored ICM tokens have shapes {tuple(c.shape)}, "
                    f"{tuple(m.shape)}; this reasoner expects ({hidden},), ({icm.config.num_memory_tokens}, {hidden}). "
                    "Run `retrv compress` again"
                )
            content[i], memory[i] = c.to(weight.device, weight.dtype), m.to(weight.device, weight.dtype)
        missing = [i for i, c in enumerate(content) if c is None]
        with torch.no_grad():
            if missing:
                full(missing)
                tokens, mask = pad_tokens([cache[i].embeds.to(weight.dtype) for i in missing])
                for j, (c, m) in enumerate(zip(icm.content(tokens, mask), icm.memory(tokens, mask), strict=True)):
                    content[missing[j]], memory[missing[j]] = c, m
            assert all(c is not None for c in content) and all(m is not None for m in memory)
            relation = icm.relation(torch.stack(memory), query.embeds[None].to(weight.dtype))  # type: ignore[arg-type]
            return torch.stack([torch.stack(content), relation], dim=1)  # type: ignore[arg-type]

    def prepare(self, query: Query, candidates: list[Candidate]) -> PreparedPrompt:
        """Encode the query, make the candidates' soft tokens (or full tokens) and build the prompt."""
        started = time.perf_counter()
        budget = self.options.budget
        cache: dict[int, CandidateTokens] = {}

        def full(indices: list[int]) -> None:
            todo = [i for i in indices if i not in cache]
            for i, tokens in zip(
                todo, candidate_tokens_batch(self.model, self, [candidates[i].item for i in todo], budget), strict=True
            ):
                cache[i] = tokens

        def inspect(i: int) -> CandidateTokens:
            full([i])
            return cache[i]

        q = query_tokens(self.model, self, query, budget)
        embed = unwrap_model(self.model).get_input_embeddings()
        shown = self.candidate_tokens
        if shown == "icm":
            soft = self._soft_tokens(q, candidates, full, cache)
            prompt = build_prompt(
                self.tokenizer, embed, q, soft_tokens=soft, special=self.special, style=self.prompt_style
            )
        else:
            if shown == "full":
                full(list(range(len(candidates))))
                previews = [cache[i] for i in range(len(candidates))]
            else:  # glance: the same model's tokens of each candidate at a small budget
                small = self.options.glance.as_token_budget(pixels_per_image_token(self.image_processor))
                previews = candidate_tokens_batch(self.model, self, [c.item for c in candidates], small)
            prompt = build_prompt(
                self.tokenizer, embed, q, full=previews, special=self.special, style=self.prompt_style, shown=shown
            )
        return PreparedPrompt(prompt, len(candidates), inspect, {"prepare": (time.perf_counter() - started) * 1000.0})

    def trace(
        self,
        query: Query,
        candidates: list[Candidate],
        options: DecodeOptions | None = None,
        generator: Any = None,
        logits_hook: Any = None,
    ) -> tuple[PreparedPrompt, Trace]:
        prepared = self.prepare(query, candidates)
        if generator is None and self.options.seed is not None:
            import torch

            generator = torch.Generator(device=prepared.prompt.embeds.device).manual_seed(self.options.seed)
        trace = generate_with_inspection(
            self.model,
            self.tokenizer,
            prepared.prompt,
            prepared.inspect,
            prepared.num_candidates,
            options or self.options.decode_options(),
            special=self.special,
            generator=generator,
            logits_hook=logits_hook,
        )
        return prepared, trace

    def rerank(self, query: Query, candidates: list[Candidate], logits_hook: Any = None) -> RerankResult:
        started = time.perf_counter()
        k = len(candidates)
        if k == 0:
            return RerankResult(
                order=[], scores=[], rerank_scores=[], confidences=[], candidate_tokens=self.candidate_tokens
            )
        prepared, trace = self.trace(query, candidates, logits_hook=logits_hook)
        answer = parse_answer(trace.forced_text or trace.text, k, self.special)
        fallback = None
        if answer.index is None:
            fallback = answer.error
            if trace.forced_text is not None:
                fallback = f"forced answer: {answer.error}"
            elif trace.stop_reason == "max_new_tokens":
                fallback = f"max_new_tokens ({self.options.max_new_tokens}) reached: {answer.error}"
            order = list(range(k))
        else:
            order = [answer.index] + [i for i in range(k) if i != answer.index]
        rank = {pos: r for r, pos in enumerate(order)}
        latency = {**prepared.latency_ms, **trace.latency_ms, "total": (time.perf_counter() - started) * 1000.0}
        if answer.index is None:  # no rerank happened: the coarse scores stand, none made up from rank
            scores = [c.coarse_score for c in candidates]
        else:  # rank-derived: 1 for the chosen one, then down by 1/K in coarse order
            scores = [1.0 - rank[i] / k for i in range(k)]
        return RerankResult(
            order=order,
            scores=scores,
            rerank_scores=[float(i == answer.index) if answer.index is not None else None for i in range(k)],
            confidences=[None] * k,
            chosen=answer.index,
            reasoning=trace.text,
            inspected=list(trace.inspected),
            fallback=fallback,
            forced_answer=trace.forced_text is not None,
            candidate_tokens=self.candidate_tokens,
            prompt_tokens=len(prepared.prompt),
            generated_tokens=len(trace.generated_ids),
            latency_ms=latency,
        )
