"""The reasoner's output grammar: one parser for search, the decode loop and the GRPO reward.

A well-formed completion is free reasoning text with any number of inspection requests
`<inspection-index-start>i<inspection-index-end>`, then exactly one `<answer>i</answer>` as the last thing
written (whitespace and end-of-turn markers may follow). `i` is a candidate number as the prompt shows it,
1-based: `2`, ` 2 ` or `[2]`. Every function here returns 0-based positions, and a failure never raises: it
comes back as a short reason string. The tags are the checkpoint's `SpecialTokens`.

Decoding stops at the first `</answer>`, so the first complete answer is the one the model gave: search ranks
by it and the reward checks it, whatever follows (a second answer makes the completion malformed, not
differently answered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retrv.rerank.sequence import SpecialTokens

_NUMBER = re.compile(r"^\s*\[?\s*(\d+)\s*\]?\s*$")
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Parsed:
    index: int | None  # 0-based candidate, None when `error` says why not
    error: str | None = None


def parse_number(body: str, num_candidates: int, what: str = "answer") -> Parsed:
    """'2', ' 2 ' or '[2]' -> candidate 1 (0-based); anything else, or a number outside 1..K, is an error."""
    match = _NUMBER.match(body)
    if not match:
        return Parsed(None, f"{what} {body.strip()[:20]!r} is not a candidate number")
    number = int(match.group(1))
    if not 1 <= number <= num_candidates:
        return Parsed(None, f"{what} {number} out of range 1..{num_candidates}")
    return Parsed(number - 1)


def parse_answer(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> Parsed:
    """The first complete `<answer>i</answer>` in `text`."""
    start = text.find(special.answer_start)
    if start < 0:
        return Parsed(None, "no answer")
    body_start = start + len(special.answer_start)
    end = text.find(special.answer_end, body_start)
    if end < 0:
        return Parsed(None, f"unclosed {special.answer_start}")
    return parse_number(text[body_start:end], num_candidates)


def parse_inspection_request(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> Parsed:
    """The request that `text` ends with (`...<inspection-index-start>i<inspection-index-end>`)."""
    if not text.endswith(special.inspect_end):
        return Parsed(None, f"no closing {special.inspect_end}")
    body_end = len(text) - len(special.inspect_end)
    start = text.rfind(special.inspect_start, 0, body_end)
    if start < 0:
        return Parsed(None, f"{special.inspect_end} without {special.inspect_start}")
    return parse_number(text[start + len(special.inspect_start) : body_end], num_candidates, "inspection")


def inspection_requests(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> list[Parsed]:
    """Every closed inspection request in `text`, in order (valid or not)."""
    pattern = re.compile(re.escape(special.inspect_start) + r"(.*?)" + re.escape(special.inspect_end), re.S)
    return [parse_number(m.group(1), num_candidates, "inspection") for m in pattern.finditer(text)]


def format_error(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> str | None:
    """Why `text` is not a well-formed completion (the module docstring), or None when it is."""
    if text.count(special.answer_start) != 1 or text.count(special.answer_end) != 1:
        return f"{text.count(special.answer_start)} answer tags, expected exactly one {special.answer_start}"
    answer = parse_answer(text, num_candidates, special)
    if answer.index is None:
        return answer.error
    after = text[text.find(special.answer_end) + len(special.answer_end) :]
    for marker in _END_OF_TURN + (special.im_end,):
        after = after.replace(marker, "")
    if after.strip():
        return "text after the answer"
    before = text[: text.find(special.answer_start)]
    requests = inspection_requests(before, num_candidates, special)
    opened, closed = before.count(special.inspect_start), before.count(special.inspect_end)
    if not opened == closed == len(requests):
        return "an inspection tag without its pair"
    bad = next((r.error for r in requests if r.index is None), None)
    return bad


def is_well_formed(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> bool:
    return format_error(text, num_candidates, special) is None
