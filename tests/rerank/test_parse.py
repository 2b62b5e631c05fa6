"""Parsing the reasoner's tags: 1-indexed in the text, 0-based out, reasons instead of exceptions."""

from __future__ import annotations

import pytest

from retrv.rerank.parse import (
    has_valid_format,
    inspection_requests,
    parse_answer,
    parse_inspection_request,
)
from retrv.rerank.sequence import SpecialTokens

S, E = "<inspection-index-start>", "<inspection-index-end>"


@pytest.mark.parametrize(
    ("text", "index", "error"),
    [
        ("Candidate 2 matches. <answer>2</answer>", 1, None),
        ("<answer> [3] </answer>", 2, None),
        ("<answer>1</answer> and later <answer>4</answer>", 0, None),  # the first complete answer
        ("I think it is 2.", None, "no answer"),
        ("<answer>2", None, "unclosed <answer>"),
        ("<answer>7</answer>", None, "answer 7 out of range 1..5"),
        ("<answer>0</answer>", None, "answer 0 out of range 1..5"),
        ("<answer>two</answer>", None, "answer 'two' is not a candidate number"),
        ("<answer>2 or 3</answer>", None, "answer '2 or 3' is not a candidate number"),
        ("", None, "no answer"),
    ],
)
def test_parse_answer(text, index, error):
    parsed = parse_answer(text, 5)
    assert (parsed.index, parsed.error) == (index, error)


def test_parse_inspection_request():
    assert parse_inspection_request(f"check details {S}3{E}", 5).index == 2
    assert parse_inspection_request(f"{S}1{E} then {S}4{E}", 5).index == 3  # the one the text ends with
    assert parse_inspection_request(f"{S}9{E}", 5).error == "inspection 9 out of range 1..5"
    assert parse_inspection_request(f"{S}3{E} more", 5).error == f"no closing {E}"
    assert parse_inspection_request(f"oops 3{E}", 5).error == f"{E} without {S}"


def test_inspection_requests_and_format():
    text = f"ideal: a cat. {S}2{E} looks right. {S}x{E} <answer>2</answer>"
    assert [p.index for p in inspection_requests(text, 3)] == [1, None]
    assert has_valid_format(text, 3)
    assert not has_valid_format("no answer at all", 3)
    assert not has_valid_format("<answer>2</answer><answer>1</answer>", 3)
    assert not has_valid_format(f"{S}2 <answer>2</answer>", 3)  # unclosed inspection tag
    assert not has_valid_format("<answer>2</answer> trailing words", 3)
    assert not has_valid_format("<answer>5</answer>", 3)


def test_custom_special_tokens():
    special = SpecialTokens.from_mapping({"answer_start": "<ans>", "answer_end": "</ans>", "unknown_role": "x"})
    assert parse_answer("<ans>2</ans>", 3, special).index == 1
    assert parse_answer("<answer>2</answer>", 3, special).error == "no answer"
