"""`retrv data synth` and `retrv data check` through the Typer sub-app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retrv.cli.data import app

runner = CliRunner()


def test_synth_then_check_ok_then_broken(tmp_path):
    out = tmp_path / "world"
    result = runner.invoke(app, ["synth", "--out", str(out), "--seed", "3", "--size", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "synth_task0: 8" in result.stderr and "synth_task7: 2" in result.stderr
    assert (out / "cot" / "train_cot.jsonl").is_file()

    result = runner.invoke(app, ["check", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "ok" in result.stderr

    qfile = out / "query" / "test" / "mbeir_synth_task3_test.jsonl"
    lines = qfile.read_text().splitlines()
    record = json.loads(lines[1])
    record["query_img_path"] = "../../etc/passwd"
    lines[1] = json.dumps(record)
    lines[0] = lines[0][:-1]  # drop the closing brace
    qfile.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["check", str(out)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "query/test/mbeir_synth_task3_test.jsonl:1: malformed JSON (Expecting ',' delimiter at column "
        f"{len(lines[0]) + 1})",
        "query/test/mbeir_synth_task3_test.jsonl:2: image path '../../etc/passwd' leaves the dataset root",
    ]
    assert "2 problem(s)" in result.stderr

    result = runner.invoke(app, ["check", str(out), "--json", "--quiet"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema"] == "retrv.data.check/1" and not data["ok"]
    assert [(p["file"], p["line"]) for p in data["problems"]] == [
        ("query/test/mbeir_synth_task3_test.jsonl", 1),
        ("query/test/mbeir_synth_task3_test.jsonl", 2),
    ]


def test_synth_json_and_refusals(tmp_path):
    out = tmp_path / "w"
    result = runner.invoke(app, ["synth", "--out", str(out), "--size", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["queries"]["train"] == {"synth_task0": 4, "synth_task3": 4, "synth_task7": 4}
    assert data["queries"]["test"] == {"synth_task0": 1, "synth_task3": 1, "synth_task7": 1}

    result = runner.invoke(app, ["synth", "--out", str(out), "--size", "1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("retrv: error: ") and "not empty" in result.stderr and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "big"), "--size", "500"])
    assert result.exit_code == 1 and "between 1 and 144" in result.stderr

    assert runner.invoke(app, ["synth", "--out", str(out), "--size", "1", "--force", "-q"]).exit_code == 0

    real = tmp_path / "real-mbeir"  # a dataset someone else wrote: --force must not touch it
    (real / "query" / "test").mkdir(parents=True)
    (real / "query" / "test" / "mbeir_mscoco_task0_test.jsonl").write_text('{"qid": "9:1"}\n')
    refused = runner.invoke(app, ["synth", "--out", str(real), "--size", "1", "--force"])
    assert refused.exit_code == 1 and "no synthetic world written by retrv" in " ".join(refused.stderr.split())
    assert (real / "query" / "test" / "mbeir_mscoco_task0_test.jsonl").read_text() == '{"qid": "9:1"}\n'


def test_check_on_a_missing_folder_fails_in_one_line(tmp_path):
    result = runner.invoke(app, ["check", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.stdout.strip() == f"{tmp_path / 'nope'}: not a directory"
