"""The reasoner's decode loop with the Detail Inspection Mechanism (DIM), shared by reason mode and GRPO.

`generate_with_inspection` drives the text stack directly on one `DynamicCache`: when the
generated text ends with `<inspection-index-start>i<inspection-index-end>`, candidate i's full tokens are
appended (`sequence.inspection_segment`) and decoding continues on the same cache, nothing re-prefilled.
At most `max_inspections` requests are served; a request past the cap, or one naming no candidate, gets a short
notice segment instead (`LIMIT_NOTICE`, `INVALID_NOTICE`; `UNREADABLE_NOTICE` when the candidate's file cannot
be read any more), which the model reads and which counts as injected, not generated, text. Decoding stops at the end-of-turn token, after
`</answer>`, or at `max_new_tokens`. With `force_answer`, a decode that stopped without a usable answer (out
of tokens, the turn ended, or an answer that names no candidate) gets `\n<answer>` injected on the same cache,
and the candidate number the model then finds likeliest, its digits kept to 1..K, is taken (budget forcing:
the reasoning so far picks the candidate, not the coarse order). `</answer>` closes it without being decoded.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retrv.errors import RetrvError
from retrv.icm.features import CandidateTokens, unwrap_model
from retrv.rerank.grammar import parse_answer, parse_inspection_request
from retrv.rerank.sequence import (
    Segment,
    SpecialTokens,
    batch_segments,
    concat_segments,
    deepstack_inputs,
    inspection_segment,
    text_segment,
)

if TYPE_CHECKING:
    import torch

LIMIT_NOTICE = "(inspection limit reached: answer from what you have seen)\n"
INVALID_NOTICE = "(no such candidate to inspect)\n"
UNREADABLE_NOTICE = "(this candidate cannot be read)\n"


@dataclass
class DecodeOptions:
    max_new_tokens: int = 512
    max_inspections: int = 5
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop_at_answer: bool = True
    force_answer: bool = False  # decoding ended with no usable answer: inject "<answer>", read one


@dataclass
class Injection:
    after: int  # generated tokens before it
    kind: str  # "inspection" | "notice" | "forced"
    candidate: int | None  # 0-based, for an inspection
    start_position: int
    length: int


@dataclass
class Trace:
    """Everything one decode did. `segments` is every row after the prompt, in order: runs of generated
    tokens (kind "generated"; the last generated token is included although it was never fed) and
    injected "inspection" / "notice" / "forced" segments, so `concat_segments([prompt, *segments])` is the
    sequence. `forced_text` is the forced answer, `<answer>i</answer>` (`<answer></answer>` when none could be read)."""

    prompt: Segment
    segments: list[Segment] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(
        default_factory=list
    )  # of each generated token (after logits_hook, at the temperature)
    injections: list[Injection] = field(default_factory=list)
    inspected: list[int] = field(default_factory=list)  # 0-based candidates whose tokens were injected
    text: str = ""
    stop_reason: str = ""  # "eos" | "answer" | "max_new_tokens": why free decoding stopped
    forced_text: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # prefill, decode, inspect

    def sequence(self) -> Segment:
        return concat_segments([self.prompt, *self.segments])


def sample_token(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: Any = None
) -> tuple[int, float]:
    """One token id from (V,) logits, and its log-probability (greedy when temperature <= 0)."""
    import torch

    logits = logits.float()
    if temperature <= 0:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, -1)[token])
    logp = torch.log_softmax(logits / temperature, -1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        probs = probs.clone()
        probs[order[drop]] = 0.0
    token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
    return token, float(logp[token])


def text_stack(model: Any, segments: list[Segment], cache: Any = None) -> torch.Tensor:
    """Last hidden states (B, L, H) of the reasoner's text stack on `segments`: one segment fed on `cache` (the
    decode loop), or several right-padded without a cache (training, `sequence.batch_segments`). Qwen3-VL's
    DeepStack features ride along (`sequence.deepstack_inputs`)."""
    base = unwrap_model(model)
    if len(segments) == 1:
        embeds, positions, mask = segments[0].embeds[None], segments[0].position_ids[:, None, :], None
    else:
        if cache is not None:
            raise ValueError("a batch of segments runs without a cache")
        embeds, positions, mask = batch_segments(segments)
    language_model = base.model.language_model
    cached = {_cache_argument(language_model): cache} if cache is not None else {}
    out = language_model(
        inputs_embeds=embeds,
        position_ids=positions,
        attention_mask=mask,
        use_cache=cache is not None,
        **cached,
        **deepstack_inputs(segments, embeds.shape[1]),
    )
    return out.last_hidden_state


_CACHE_ARGUMENT: dict[type, str] = {}  # per text-stack class: read once, not at every decoded token


def _cache_argument(language_model: Any) -> str:
    """`cache` since transformers 5.x renamed it (the old name warns on every model), `past_key_values` before."""
    kind = type(language_model)
    if kind not in _CACHE_ARGUMENT:
        names = inspect.signature(language_model.forward).parameters
        _CACHE_ARGUMENT[kind] = "cache" if "cache" in names else "past_key_values"
    return _CACHE_ARGUMENT[kind]


def forward_segment(model: Any, cache: Any, segment: Segment) -> torch.Tensor:
    """Feed a segment on the cache; return the (V,) logits at its last row."""
    return unwrap_model(model).lm_head(text_stack(model, [segment], cache)[0, -1])


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(unwrap_model(model), "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in ids if i is not None}


def generate_with_inspection(
    model: Any,
    tokenizer: Any,
    prompt: Segment,
    inspect: Callable[[int], CandidateTokens],
    num_candidates: int,
    options: DecodeOptions = DecodeOptions(),
    *,
    special: SpecialTokens = SpecialTokens(),
    generator: Any = None,
    logits_hook: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None,
) -> Trace:
    """Decode after `prompt`, serving inspection requests with `inspect(i)` (0-based) on the same KV cache.

    `logits_hook(generated_ids, logits) -> logits` may constrain or record each step (tests force tokens
    with it; GRPO can too). Sampling follows `options.temperature` / `top_p` with `generator`.
    """
    import torch
    from transformers.cache_utils import DynamicCache

    if options.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    base = unwrap_model(model)
    embed = base.get_input_embeddings()
    stop_ids = _stop_ids(model, tokenizer)
    trace = Trace(prompt=prompt)
    clock = {"prefill": 0.0, "decode": 0.0, "inspect": 0.0}
    generated = trace.generated_ids
    with torch.no_grad():
        cache = DynamicCache(config=base.config.get_text_config())
        started = time.perf_counter()
        logits = _synced(forward_segment(model, cache, prompt))
        clock["prefill"] = time.perf_counter() - started
        position, run_start = prompt.next_position, prompt.next_position
        run: list[int] = []

        def flush() -> None:
            nonlocal run
            if run:
                trace.segments.append(text_segment(tokenizer, embed, run, run_start))
            run = []

        while True:
            started = time.perf_counter()
            if logits_hook is not None:
                logits = logits_hook(list(generated), logits)
            token, logprob = sample_token(logits, options.temperature, options.top_p, generator)
            generated.append(token)
            trace.logprobs.append(logprob)
            run.append(token)
            if token in stop_ids:
                trace.stop_reason = "eos"
            elif options.stop_at_answer and _ends_with(tokenizer, generated, special.answer_end):
                trace.stop_reason = "answer"
            elif len(generated) >= options.max_new_tokens:
                trace.stop_reason = "max_new_tokens"
            if trace.stop_reason:
                clock["decode"] += time.perf_counter() - started
                break
            token_segment = text_segment(tokenizer, embed, [token], position)
            position += 1
            injected = None
            if _ends_with(tokenizer, generated, special.inspect_end):
                asked = parse_inspection_request(_decode(tokenizer, generated), num_candidates, special)
                notice = INVALID_NOTICE if asked.index is None else LIMIT_NOTICE
                if asked.index is not None and len(trace.inspected) < options.max_inspections:
                    try:
                        full = inspect(asked.index)
                        injected = inspection_segment(tokenizer, embed, asked.index, full, position, special)
                        trace.inspected.append(asked.index)
                    except RetrvError:
                        notice = UNREADABLE_NOTICE
                if injected is None:
                    injected = text_segment(tokenizer, embed, notice, position, kind="notice")
            if injected is None:
                logits = forward_segment(model, cache, token_segment)
                clock["decode"] += time.perf_counter() - started
                continue
            flush()
            trace.segments.append(injected)
            trace.injections.append(
                Injection(len(generated), injected.kind, injected.candidate, position, len(injected))
            )
            logits = _synced(forward_segment(model, cache, concat_segments([token_segment, injected])))
            position = run_start = injected.next_position
            clock["inspect"] += time.perf_counter() - started
        forcing = options.force_answer and (
            parse_answer(_decode(tokenizer, generated), num_candidates, special).index is None
        )
        if forcing and trace.stop_reason == "eos":  # the forced answer replaces the end of turn (never fed)
            for row in (generated, trace.logprobs, run):
                row.pop()
        unfed = [token] if forcing and trace.stop_reason != "eos" else []  # sampled, never fed
        flush()
        if forcing:
            started, free_text = time.perf_counter(), _decode(tokenizer, generated)
            number = _force_answer(
                model,
                tokenizer,
                embed,
                cache,
                trace,
                unfed,
                position + len(unfed),
                num_candidates,
                special,
                logits_hook,
            )
            trace.forced_text = special.answer_start + (number or "") + special.answer_end
            trace.text = free_text + "\n" + trace.forced_text
            clock["decode"] += time.perf_counter() - started
        else:
            shown = generated[:-1] if trace.stop_reason == "eos" else generated  # the end-of-turn token is not text
            trace.text = _decode(tokenizer, shown)
    trace.latency_ms = {k: v * 1000.0 for k, v in clock.items()}
    return trace


def _force_answer(
    model: Any,
    tokenizer: Any,
    embed: Any,
    cache: Any,
    trace: Trace,
    unfed: list[int],
    position: int,
    num_candidates: int,
    special: SpecialTokens,
    logits_hook: Any = None,
) -> str | None:
    """Inject "\n<answer>" after the generated text (`unfed`: its last token, not yet on the cache) and read a
    candidate number off the model: at each step the likeliest digit that keeps the number a prefix of one in
    1..num_candidates, until the number is whole and the model would rather write anything but another digit.
    Returns the number ("3"), or None when the tokenizer has no digit tokens."""
    import torch

    numbers = {str(i) for i in range(1, num_candidates + 1)}
    digits = _digit_tokens(tokenizer)
    injected = text_segment(tokenizer, embed, "\n" + special.answer_start, position, kind="forced")
    fed = [text_segment(tokenizer, embed, unfed, position - len(unfed))] if unfed else []
    trace.segments.append(injected)
    trace.injections.append(Injection(len(trace.generated_ids), "forced", None, position, len(injected)))
    logits = forward_segment(model, cache, concat_segments([*fed, injected]))
    position, written = injected.next_position, ""
    ids: list[int] = []
    while True:
        if logits_hook is not None:
            logits = logits_hook(list(trace.generated_ids), logits)
        allowed = [i for i, d in digits.items() if any(n.startswith(written + d) for n in numbers)]
        if not allowed and written not in numbers:
            return None
        best = max(allowed, key=lambda i: float(logits[i])) if allowed else None
        if written in numbers:
            others = logits.clone()
            others[list(digits)] = float("-inf")
            if best is None or float(others.max()) >= float(logits[best]):
                break
        assert best is not None  # a number that is not whole yet always has a next digit in range
        ids.append(best)
        trace.generated_ids.append(best)
        trace.logprobs.append(float(torch.log_softmax(logits.float(), -1)[best]))
        written += digits[best]
        if not any(n != written and n.startswith(written) for n in numbers):
            break  # no longer number in range: the answer is whole, no need to feed its last digit
        logits = forward_segment(model, cache, text_segment(tokenizer, embed, [best], position))
        position += 1
    trace.segments.append(text_segment(tokenizer, embed, ids, injected.next_position))
    return written


@functools.lru_cache(maxsize=8)
def _digit_tokens(tokenizer: Any) -> dict[int, str]:
    """Token id -> its digits, for every vocabulary entry made of ASCII digits only."""
    return {i: t for t, i in tokenizer.get_vocab().items() if t.isascii() and t.isdigit()}


def _synced(logits: torch.Tensor) -> torch.Tensor:
    """Wait for the GPU so the stage clocks measure the work, not its launch."""
    if logits.is_cuda:
        import torch

        torch.cuda.synchronize(logits.device)
    return logits


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def _ends_with(tokenizer: Any, ids: list[int], marker: str) -> bool:
    # every token decodes to at least one character, so the marker lies within its length in tokens
    return _decode(tokenizer, ids[-len(marker) :]).endswith(marker)
