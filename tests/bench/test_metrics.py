"""Recall@k as UniIR computes it, headline metrics per task, ties, and TREC run files."""

from __future__ import annotations

import pytest

from retrv.bench.metrics import (
    RunWriter,
    evaluate,
    filter_positives,
    headline_k,
    rank_by_score,
    read_run,
    recall_at_k,
    run_rankings,
    write_run,
)
from retrv.data.mbeir import MBeirQuery
from retrv.errors import DataError


def q(qid, pos, task, dataset):
    return MBeirQuery(qid, "t", None, "text", pos, [], task, dataset)


def test_recall_counts_a_query_when_any_positive_is_in_the_top_k():
    ranked = ["9:5", "9:1", "9:7", "9:2", "9:3", "9:8"]
    assert recall_at_k(ranked, ["9:1", "9:9"], 1) == 0.0
    assert recall_at_k(ranked, ["9:1", "9:9"], 2) == 1.0
    assert recall_at_k(ranked, ["9:8"], 5) == 0.0
    assert recall_at_k(ranked, ["9:8"], 6) == 1.0
    assert recall_at_k(ranked, [], 10) == 0.0  # no positive: a miss, as in UniIR


def test_headline_is_r5_except_r10_for_fashion200k_and_fashioniq():
    assert [headline_k(i) for i in range(10)] == [5, 10, 5, 5, 5, 5, 5, 10, 5, 5]


def test_evaluate_by_hand():
    queries = [
        # MSCOCO task 0: hit at 1, hit at 4, miss -> R@1 1/3, R@5 2/3, R@10 2/3
        q("9:1", ["9:10"], 0, "mscoco_task0"),
        q("9:2", ["9:20"], 0, "mscoco_task0"),
        q("9:3", ["9:30"], 0, "mscoco_task0"),
        # Fashion200K task 0: hits at 7 and 3 -> R@5 1/2, R@10 1 (its headline)
        q("1:1", ["1:10"], 0, "fashion200k_task0"),
        q("1:2", ["1:20", "1:21"], 0, "fashion200k_task0"),
        # FashionIQ task 7: hit at 10 -> headline R@10 = 1; CIRR task 7: hit at 6 -> headline R@5 = 0
        q("7:1", ["7:10"], 7, "fashioniq_task7"),
        q("8:1", ["8:10"], 7, "cirr_task7"),
    ]
    pad = [f"0:{i}" for i in range(100, 110)]
    rankings = {
        "9:1": ["9:10", *pad],
        "9:2": [*pad[:3], "9:20", *pad[3:]],
        "9:3": pad,
        "1:1": [*pad[:6], "1:10", *pad[6:]],
        "1:2": [*pad[:2], "1:21", *pad[2:]],
        "7:1": [*pad[:9], "7:10"],
        "8:1": [*pad[:5], "8:10"],
    }
    report = evaluate(rankings, queries)
    rows = {r.dataset: r for r in report.rows}
    assert [r.dataset for r in report.rows] == ["mscoco_task0", "fashion200k_task0", "fashioniq_task7", "cirr_task7"]
    assert rows["mscoco_task0"].recall == pytest.approx({1: 1 / 3, 5: 2 / 3, 10: 2 / 3})
    assert rows["fashion200k_task0"].recall == pytest.approx({1: 0.0, 5: 0.5, 10: 1.0})
    assert (rows["fashion200k_task0"].headline_k, rows["fashion200k_task0"].headline) == (10, 1.0)
    assert (rows["fashioniq_task7"].headline_k, rows["fashioniq_task7"].headline) == (10, 1.0)
    assert (rows["cirr_task7"].headline_k, rows["cirr_task7"].headline) == (5, 0.0)
    assert report.average == pytest.approx((2 / 3 + 1.0 + 1.0 + 0.0) / 4)
    assert report.task_averages == pytest.approx({0: (2 / 3 + 1.0) / 2, 7: 0.5})
    d = report.to_dict()
    assert d["rows"][1]["headline_metric"] == "R@10" and d["rows"][1]["recall"]["R@5"] == 0.5


def test_positives_are_filtered_by_the_query_dataset_prefix():
    # An OVEN query (5:) whose positives include an INFOSEEK did (6:): UniIR's eval ignores the 6: one.
    assert filter_positives("5:1", ["6:9", "5:3"]) == ["5:3"]
    oven = q("5:1", ["6:9", "5:3"], 6, "oven_task6")
    ranked = ["6:9", "5:50", "5:51", "5:52", "5:53", "5:54", "5:3"]
    row = evaluate({"5:1": ranked}, [oven]).rows[0]
    assert row.recall == {1: 0.0, 5: 0.0, 10: 1.0}
    only_other = evaluate({"5:2": ["6:9"]}, [q("5:2", ["6:9"], 6, "oven_task6")]).rows[0]
    assert only_other.recall[1] == 0.0  # nothing of its own dataset left: a miss


def test_missing_rankings_are_counted_as_misses():
    row = evaluate(
        {"9:1": ["9:10"]}, [q("9:1", ["9:10"], 0, "mscoco_task0"), q("9:2", ["9:20"], 0, "mscoco_task0")]
    ).rows[0]
    assert (row.queries, row.missing, row.recall[1]) == (2, 1, 0.5)


def test_ties_are_broken_by_did_whatever_the_input_order():
    scores = [("9:3", 0.5), ("9:1", 0.9), ("9:2", 0.5), ("9:0", 0.1)]
    assert rank_by_score(scores) == ["9:1", "9:2", "9:3", "9:0"]
    assert rank_by_score(dict(reversed(scores))) == ["9:1", "9:2", "9:3", "9:0"]
    # With the positive tied at the k boundary the outcome is fixed: "9:2" < "9:3" so 9:2 is in the top 2.
    assert recall_at_k(rank_by_score(scores), ["9:2"], 2) == 1.0
    assert recall_at_k(rank_by_score(scores), ["9:3"], 2) == 0.0


def test_run_file_round_trip_uniir_lines_and_tie_order(tmp_path):
    path = tmp_path / "run.txt"
    write_run(path, {"9:1": [("9:10", 0.75), ("9:11", 0.5)], "9:2": [("9:20", 1.0)]}, "retrv")
    assert path.read_text() == "9:1 Q0 9:10 1 0.75 retrv\n9:1 Q0 9:11 2 0.5 retrv\n9:2 Q0 9:20 1 1.0 retrv\n"
    run = read_run(path)
    assert run_rankings(run) == {"9:1": ["9:10", "9:11"], "9:2": ["9:20"]}
    assert run["9:1"][0].score == 0.75 and run["9:1"][0].run_name == "retrv"
    # UniIR's run lines carry task_id as a 7th column; equal ranks fall back to score, then did.
    path.write_text("9:1 Q0 9:12 1 0.2 x 0\n9:1 Q0 9:11 1 0.3 x 0\n9:1 Q0 9:10 1 0.3 x 0\n")
    assert run_rankings(read_run(path)) == {"9:1": ["9:10", "9:11", "9:12"]}


@pytest.mark.parametrize("line", ["9:1 Q0 9:10 1 0.5", "9:1 Q1 9:10 1 0.5 r", "9:1 Q0 9:10 one 0.5 r"])
def test_malformed_run_lines_name_their_line(tmp_path, line):
    path = tmp_path / "run.txt"
    path.write_text(f"9:1 Q0 9:11 1 0.9 r\n{line}\n")
    with pytest.raises(DataError, match=r"run\.txt:2: a run line is"):
        read_run(path)


def test_resume_drops_a_torn_query_and_appends(tmp_path):
    path = tmp_path / "run.txt"
    with RunWriter(path, "r", append=False) as w:
        w.write("9:1", [("9:10", 0.9), ("9:11", 0.8)])
        w.write("9:2", [("9:20", 0.7), ("9:21", 0.6)])
    path.write_bytes(path.read_bytes()[:-9])  # killed while writing 9:2's last line
    assert list(read_run(path)) == ["9:1"]
    assert list(read_run(path, repair=True)) == ["9:1"]
    assert path.read_text() == "9:1 Q0 9:10 1 0.9 r\n9:1 Q0 9:11 2 0.8 r\n"
    with RunWriter(path, "r") as w:  # resume: only the missing query is run again
        w.write("9:2", [("9:21", 0.9)])
    assert run_rankings(read_run(path)) == {"9:1": ["9:10", "9:11"], "9:2": ["9:21"]}
    assert read_run(tmp_path / "absent.txt") == {}
    with pytest.raises(ValueError, match="spaces"):
        write_run(path, {"9:1": [("a b", 1.0)]}, "r")
