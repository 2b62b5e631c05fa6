"""Reading the reasoner's output: the `<answer>i</answer>` and `<inspection-index-start>i<inspection-index-end>` tags.

Candidate numbers in the text are 1-indexed (`[1]`..`[K]` in the prompt); every function here
returns 0-based positions. A failure never raises: it comes back as a short reason string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retrv.rerank.sequence import SpecialTokens

_NUMBER = re.compile(r"^\s*\[?\s*(\d+)\s*\]?\s*$")


@dataclass(frozen=True)
class Parsed:
    index: int | None  # 0-based candidate, None when `error` says why not
    error: str | None = None


def parse_number(body: str, num_candidates: int, what: str = "answer") -> Parsed:
    """'2', ' 2 ' or '[2]' -> candidate 1 (0-based); anything else is an error."""
    match = _NUMBER.match(body)
    if not match:
        shown = body.strip()[:20]
        return Parsed(None, f"{what} {shown!r} is not a candidate number")
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


def has_valid_format(text: str, num_candidates: int, special: SpecialTokens = SpecialTokens()) -> bool:
    """Exactly one well-formed answer, at the end, and every opened inspection tag closed (GRPO's r_format)."""
    if text.count(special.answer_start) != 1 or text.count(special.answer_end) != 1:
        return False
    if parse_answer(text, num_candidates, special).index is None:
        return False
    if not text.rstrip().endswith(special.answer_end):
        return False
    return (
        text.count(special.inspect_start)
        == text.count(special.inspect_end)
        == len(inspection_requests(text, num_candidates, special))
    )
