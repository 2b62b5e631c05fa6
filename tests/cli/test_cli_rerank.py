"""Stage 2 from the command line: compress, then search with --rerank score and --rerank reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrv.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def mixed_index(sample_photos_dir, tmp_path_factory) -> Path:
    """Photos plus two text documents, indexed with the offline `lite` encoder."""
    folder = tmp_path_factory.mktemp("mixed")
    for photo in ("coffee.jpg", "rocket.jpg", "chelsea.jpg"):
        (folder / photo).write_bytes((sample_photos_dir / photo).read_bytes())
    (folder / "notes.txt").write_text("Espresso tasting notes: a small cup of strong coffee.\n")
    (folder / "launch.md").write_text("# Launch day\nThe rocket lifted off at dawn.\n")
    root = tmp_path_factory.mktemp("mixed-index") / "index"
    result = runner.invoke(app, ["build-index", str(folder), "--index", str(root), "--encoder", "lite", "-q"])
    assert result.exit_code == 0, result.output
    return root


def test_score_mode_json(mixed_index, tiny_reasoner_dir):
    result = runner.invoke(
        app,
        [
            "search",
            "a cup of coffee",
            "--index",
            str(mixed_index),
            "--rerank",
            "score",
            "--reasoner",
            str(tiny_reasoner_dir),
            "--json",
            "--k",
            "5",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rerank"] == "score" and len(data["hits"]) == 5
    for hit in data["hits"]:
        assert 0.0 <= hit["rerank_score"] <= 1.0
        assert hit["score"] == pytest.approx(hit["coarse_score"] + hit["rerank_score"], abs=1e-5)
    scores = [h["score"] for h in data["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_score_mode_min_score_no_match(mixed_index, tiny_reasoner_dir):
    result = runner.invoke(
        app,
        [
            "search",
            "a cup of coffee",
            "--index",
            str(mixed_index),
            "--rerank",
            "score",
            "--reasoner",
            str(tiny_reasoner_dir),
            "--min-score",
            "1.01",
            "--json",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["no_match"] is True and data["hits"] == []


def test_compress_then_reason(mixed_index, reasoner_checkpoint):
    first = runner.invoke(
        app, ["compress", "--index", str(mixed_index), "--reasoner", str(reasoner_checkpoint), "--json", "-q"]
    )
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["computed"] == 5 and report["unchanged"] == 0
    again = runner.invoke(
        app, ["compress", "--index", str(mixed_index), "--reasoner", str(reasoner_checkpoint), "--json", "-q"]
    )
    assert json.loads(again.stdout)["computed"] == 0 and json.loads(again.stdout)["unchanged"] == 5

    info = json.loads(runner.invoke(app, ["info", "--index", str(mixed_index), "--json"]).stdout)
    assert info["side_tables"] == [report["table"]]

    result = runner.invoke(
        app,
        [
            "search",
            "a rocket",
            "--index",
            str(mixed_index),
            "--rerank",
            "reason",
            "--reasoner",
            str(reasoner_checkpoint),
            "--show-reasoning",
            "--json",
            "--k",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rerank"] == "reason"
    assert isinstance(data["reasoning"], str) and data["prompt_tokens"] > 0 and data["generated_tokens"] > 0
    assert len(data["hits"]) == 5 and sorted(h["rank"] for h in data["hits"]) == [1, 2, 3, 4, 5]
    # a random tiny model writes no valid answer: the coarse order is kept and the result says why
    coarse = runner.invoke(app, ["search", "a rocket", "--index", str(mixed_index), "--json", "--k", "5"])
    coarse_ids = [h["id"] for h in json.loads(coarse.stdout)["hits"]]
    if data["fallback"] is not None:
        assert [h["id"] for h in data["hits"]] == coarse_ids
    else:
        chosen = [h for h in data["hits"] if h["chosen"]]
        assert len(chosen) == 1 and chosen[0]["rank"] == 1

    plain = runner.invoke(
        app,
        [
            "search",
            "a rocket",
            "--index",
            str(mixed_index),
            "--rerank",
            "reason",
            "--reasoner",
            str(reasoner_checkpoint),
            "--show-reasoning",
            "--k",
            "3",
        ],
    )
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.startswith("# ") and "inspected:" in plain.stdout

    capped = runner.invoke(
        app,
        [
            "search",
            "a rocket",
            "--index",
            str(mixed_index),
            "--rerank",
            "reason",
            "--json",
            "--reasoner",
            str(reasoner_checkpoint),
            "--k",
            "5",
            "--max-new-tokens",
            "3",
        ],
    )
    capped = json.loads(capped.stdout)
    assert capped["generated_tokens"] <= 3 and "max_new_tokens (3) reached" in capped["fallback"]
    assert [h["id"] for h in capped["hits"]] == coarse_ids and capped["forced_answer"] is False
    forced = runner.invoke(
        app,
        [
            "search",
            "a rocket",
            "--index",
            str(mixed_index),
            "--rerank",
            "reason",
            "--json",
            "--reasoner",
            str(reasoner_checkpoint),
            "--k",
            "5",
            "--max-new-tokens",
            "3",
            "--force-answer",
        ],
    )
    forced = json.loads(forced.stdout)  # the capped reasoner is made to name a candidate
    assert forced["forced_answer"] is True and forced["fallback"] is None and forced["generated_tokens"] == 4
    chosen = [h for h in forced["hits"] if h["chosen"]]
    assert len(chosen) == 1 and chosen[0]["rank"] == 1 and forced["reasoning"].endswith("</answer>")


def test_reason_mode_with_a_plain_model_glances_and_icm_needs_a_checkpoint(mixed_index, tiny_reasoner_dir):
    args = _stage2(mixed_index, "reason", tiny_reasoner_dir)
    glance = runner.invoke(app, [*args, "--json", "--max-new-tokens", "4", "-q"])
    assert glance.exit_code == 0, glance.output
    assert json.loads(glance.stdout)["candidate_tokens"] == "glance"
    icm = runner.invoke(app, [*args, "--candidate-tokens", "icm"])
    assert icm.exit_code == 1
    assert "--candidate-tokens glance" in icm.stderr and "--rerank score" in icm.stderr


def _stage2(index, mode, reasoner) -> list[str]:
    return ["search", "a rocket", "--index", str(index), "--rerank", mode, "--reasoner", str(reasoner)]


def _reason(index, checkpoint, *extra):
    args = ["search", "a rocket", "--index", str(index), "--rerank", "reason", "--reasoner", str(checkpoint)]
    return runner.invoke(app, [*args, "--k", "5", "--max-new-tokens", "3", *extra])


@pytest.mark.parametrize("mode", [[], ["-f"], ["--json"], ["--show-reasoning"]])
def test_a_fallback_is_said_on_stderr_in_every_output_mode(mixed_index, reasoner_checkpoint, mode):
    result = _reason(mixed_index, reasoner_checkpoint, *mode)  # 3 tokens: no answer, the coarse order stands
    assert result.exit_code == 0, result.output
    assert "reranker's output was unusable (max_new_tokens (3) reached" in result.stderr
    assert "unusable" not in result.stdout


def test_a_fallback_shows_coarse_scores_not_scores_made_up_from_rank(mixed_index, reasoner_checkpoint):
    data = json.loads(_reason(mixed_index, reasoner_checkpoint, "--json").stdout)
    assert data["fallback"] is not None
    assert [h["score"] for h in data["hits"]] == [h["coarse_score"] for h in data["hits"]]
    assert all(h["rerank_score"] is None and not h["chosen"] for h in data["hits"])


def test_min_score_in_reason_mode_is_on_the_coarse_score(mixed_index, reasoner_checkpoint):
    coarse = json.loads(runner.invoke(app, ["search", "a rocket", "--index", str(mixed_index), "--json"]).stdout)
    scores = sorted(h["coarse_score"] for h in coarse["hits"])
    threshold = (scores[-2] + scores[-3]) / 2  # keeps the coarse top 2, whatever the reasoner picks
    for extra in ([], ["--force-answer"]):  # a fallback, and a forced pick (chosen, rerank_score 1.0)
        data = json.loads(
            _reason(mixed_index, reasoner_checkpoint, "--json", "--min-score", str(threshold), *extra).stdout
        )
        assert len(data["hits"]) == 2 and all(h["coarse_score"] >= threshold for h in data["hits"])
        assert data["no_match"] is False
    none_left = _reason(mixed_index, reasoner_checkpoint, "--json", "--force-answer", "--min-score", "1.01")
    assert json.loads(none_left.stdout)["no_match"] is True and "no match" in none_left.stderr


def test_hits_below_the_reranked_depth_are_counted_and_said(mixed_index, tiny_reasoner_dir):
    args = _stage2(mixed_index, "score", tiny_reasoner_dir)
    data = json.loads(runner.invoke(app, [*args, "--k", "5", "--rerank-k", "2", "--json", "-q"]).stdout)
    assert data["reranked"] == 2
    assert [h["rerank_score"] is not None for h in data["hits"]] == [True, True, False, False, False]
    assert data["latency_ms"].keys() >= {"rerank", "rerank.total"}
    plain = runner.invoke(app, [*args, "--k", "5", "--rerank-k", "2"])
    assert plain.exit_code == 0 and "hits 3-5 are below the reranked depth" in plain.stderr
    whole = runner.invoke(app, [*args, "--k", "5", "--json"])
    assert json.loads(whole.stdout)["reranked"] == 5 and "below the reranked depth" not in whole.stderr
    plain_coarse = json.loads(runner.invoke(app, ["search", "a rocket", "--index", str(mixed_index), "--json"]).stdout)
    assert plain_coarse["reranked"] == 0


def test_flags_of_another_rerank_mode_are_said_to_do_nothing(mixed_index, tiny_reasoner_dir):
    args = ["search", "a rocket", "--index", str(mixed_index), "--k", "3"]
    result = runner.invoke(app, [*args, "--visual-retracing", "--max-new-tokens", "9"])
    assert result.exit_code == 0, result.output
    assert "--visual-retracing applies to --rerank score; the stage 2 here is none" in result.stderr
    assert "--max-new-tokens applies to --rerank reason" in result.stderr
    quiet = runner.invoke(app, [*args, "--visual-retracing", "-q"])
    assert "applies to" not in quiet.stderr


def test_visual_retracing_that_would_retrace_nothing_is_refused(mixed_index, tiny_reasoner_dir):
    args = _stage2(mixed_index, "score", tiny_reasoner_dir)
    result = runner.invoke(app, [*args, "--visual-retracing"])
    assert result.exit_code == 1
    assert "this reasoner has 2 layers, so nothing would be retraced" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the device note, then one line


def test_an_icm_setting_from_a_variable_is_named_in_the_error(mixed_index, tiny_reasoner_dir):
    args = _stage2(mixed_index, "reason", tiny_reasoner_dir)
    result = runner.invoke(app, args, env={"RETRV_CANDIDATE_TOKENS": "icm"})
    assert result.exit_code == 1 and "(candidate_tokens from RETRV_CANDIDATE_TOKENS)" in result.stderr


def test_an_embedding_model_given_as_reasoner_is_named_for_what_it_is(mixed_index, tiny_clip_dir):
    args = ["search", "a rocket", "--index", str(mixed_index), "--rerank", "score", "--reasoner", str(tiny_clip_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "is a 'clip' model, not a vision-language model" in result.stderr and "--encoder" in result.stderr
