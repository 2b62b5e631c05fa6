"""The output grammar: 1-indexed in the text, 0-based out, reasons instead of exceptions; search and the GRPO
reward read a completion the same way."""

from __future__ import annotations

import pytest

from retrv.rerank.grammar import (
    format_error,
    inspection_requests,
    is_well_formed,
    parse_answer,
    parse_inspection_request,
)
from retrv.rerank.sequence import SpecialTokens
from retrv.train.rewards import reward

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
def test_grammar_parse_answer(text, index, error):
    parsed = parse_answer(text, 5)
    assert (parsed.index, parsed.error) == (index, error)


def test_grammar_parse_inspection_request():
    assert parse_inspection_request(f"check details {S}3{E}", 5).index == 2
    assert parse_inspection_request(f"{S}1{E} then {S}4{E}", 5).index == 3  # the one the text ends with
    assert parse_inspection_request(f"{S}9{E}", 5).error == "inspection 9 out of range 1..5"
    assert parse_inspection_request(f"{S}3{E} more", 5).error == f"no closing {E}"
    assert parse_inspection_request(f"oops 3{E}", 5).error == f"{E} without {S}"


def test_grammar_inspection_requests_and_format():
    text = f"ideal: a cat. {S}2{E} looks right. {S}x{E} <answer>2</answer>"
    assert [p.index for p in inspection_requests(text, 3)] == [1, None]
    assert not is_well_formed(text, 3)  # a request that names no candidate
    assert is_well_formed(text.replace(f"{S}x{E}", f"{S}3{E}"), 3)
    assert not is_well_formed("no answer at all", 3)
    assert not is_well_formed("<answer>2</answer><answer>1</answer>", 3)
    assert not is_well_formed(f"{S}2 <answer>2</answer>", 3)  # unclosed inspection tag
    assert not is_well_formed("<answer>2</answer> trailing words", 3)
    assert not is_well_formed("<answer>5</answer>", 3)


def test_grammar_custom_special_tokens():
    special = SpecialTokens.from_mapping({"answer_start": "<ans>", "answer_end": "</ans>", "unknown_role": "x"})
    assert parse_answer("<ans>2</ans>", 3, special).index == 1
    assert parse_answer("<answer>2</answer>", 3, special).error == "no answer"


# (completion, K, target 0-based): what search ranks first and what the reward pays must agree on every line.
AGREEMENT = [
    ("Candidate 2 matches. <answer>2</answer>", 3, 1),  # well-formed, right
    ("Candidate 2 matches. <answer>2</answer>", 3, 0),  # well-formed, wrong
    ("<answer>[2]</answer>", 3, 1),  # bracketed as the prompt shows it
    ("<answer> 3 </answer>\n<|im_end|>", 3, 2),  # spaces, and an end-of-turn marker after the answer
    ("<answer>1</answer><answer>2</answer>", 3, 0),  # two answers: the first is the answer, the format is bad
    ("<answer>1</answer><answer>2</answer>", 3, 1),
    (f"{S}2{E} close. <answer>2</answer>", 3, 1),  # an inspection, then the answer
    (f"{S}2 <answer>2</answer>", 3, 1),  # a dangling inspection tag
    (f"<answer>2</answer>{S}1{E}", 3, 1),  # an inspection after the answer
    (f"{S}7{E}<answer>1</answer>", 3, 0),  # an inspection out of range
    ("<answer>4</answer>", 3, 3),  # the answer out of range
    ("<answer>0</answer>", 3, 0),
    ("<answer>two</answer>", 3, 1),  # not a number
    ("<answer>2", 3, 1),  # unclosed
    ("I think it is 2.", 3, 1),  # no answer at all
    ("<answer>2</answer> and more words", 3, 1),  # text after the answer
]


@pytest.mark.parametrize(("text", "k", "target"), AGREEMENT)
def test_grammar_search_and_reward_agree(text, k, target):
    chosen = parse_answer(text, k).index  # what search puts first (None: coarse order kept)
    well_formed = is_well_formed(text, k)
    assert reward(text, target, k, lam=0.0) == float(well_formed) + float(chosen == target)
    assert (format_error(text, k) is None) == well_formed
    if well_formed:  # a well-formed completion always names a candidate search can rank
        assert chosen is not None


def test_grammar_verdicts_of_the_table():
    verdicts = {text: is_well_formed(text, k) for text, k, _ in AGREEMENT}
    well_formed = {text for text, ok in verdicts.items() if ok}
    assert well_formed == {
        "Candidate 2 matches. <answer>2</answer>",
        "<answer>[2]</answer>",
        "<answer> 3 </answer>\n<|im_end|>",
        f"{S}2{E} close. <answer>2</answer>",
    }
    assert parse_answer("<answer>[2]</answer>", 3).index == 1
    assert reward("<answer>[2]</answer>", 1, 3, lam=0.0) == 2.0  # search ranks candidate 2 first: paid as right


def test_grammar_reward_reads_the_checkpoints_own_tags():
    special = SpecialTokens.from_mapping({"answer_start": "<ans>", "answer_end": "</ans>"})
    assert reward("<ans>2</ans>", 1, 3, lam=0.0, special=special) == 2.0
    assert reward("<answer>2</answer>", 1, 3, lam=0.0, special=special) == 0.0
