"""`retrv serve` and `retrv search --server` from the command line: the same output as a local search, one-line
errors, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from retrv.cli.app import app

runner = CliRunner()
RETRV = [sys.executable, "-m", "retrv.cli.app"]


def _same_document(remote: str, local: str) -> None:
    """Equal but for the latency, and for the last digits of a score: the server may encode a query in a batch, or
    on another number of threads, and float sums then run in another order."""
    got, expected = json.loads(remote), json.loads(local)
    assert set(got.pop("latency_ms")) == set(expected.pop("latency_ms"))
    got_hits, expected_hits = got.pop("hits"), expected.pop("hits")
    assert got == expected
    assert [h["id"] for h in got_hits] == [h["id"] for h in expected_hits]
    for a, b in zip(got_hits, expected_hits, strict=True):
        floats = {name for name, value in b.items() if isinstance(value, float)}
        assert {n: v for n, v in a.items() if n not in floats} == {n: v for n, v in b.items() if n not in floats}
        assert {n: a[n] for n in floats} == pytest.approx({n: b[n] for n in floats}, abs=1e-5)


def test_search_through_the_server_prints_what_a_local_search_prints(served):
    index = ["--index", str(served.photos_index)]
    through = ["--server", served.url.removeprefix("http://")]  # the scheme may be left out
    for args in (["a cup of coffee", "--k", "4"], ["a rocket", "-f", "--k", "3"]):
        local = runner.invoke(app, ["search", *args, *index])
        remote = runner.invoke(app, ["search", *args, *index, *through])
        assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
        assert remote.stdout == local.stdout and remote.stdout

    rocket, flower = served.photos / "rocket.jpg", served.photos / "flower.jpg"
    composed = [str(rocket), "--add", "a launch", "--subtract", str(flower), "--k", "5", "--json", "--min-score", "0.1"]
    local = runner.invoke(app, ["search", *composed, *index])
    remote = runner.invoke(app, ["search", *composed, *index], env={"RETRV_SERVER": served.url})
    assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
    _same_document(remote.stdout, local.stdout)

    nothing = ["a cup of coffee", "--min-score", "0.99", *index, *through]
    remote = runner.invoke(app, ["search", *nothing])
    assert remote.exit_code == 0 and remote.stdout == "" and "no match" in remote.stderr


def test_search_through_the_server_uses_its_default_index_and_refuses_model_flags(served):
    result = runner.invoke(app, ["search", "a cat", "--server", served.url, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["index"] == str(served.photos_index)
    result = runner.invoke(app, ["search", "a cat", "--server", served.url, "--index", "live-of-tests", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["index"] == str(served.live_index)
    result = runner.invoke(app, ["search", "a cat", "--server", served.url, "--index", "nowhere"])
    assert result.exit_code == 1 and result.stderr == "retrv: error: index 'nowhere' is not served here; served: " + (
        f"{served.photos_index}, live-of-tests\n"
    )
    result = runner.invoke(app, ["search", "a cat", "--server", served.url, "--reasoner", "x"])
    assert result.exit_code == 1 and "--reasoner is the server's to choose" in result.stderr


def test_serve_filter_and_dedup_go_through_the_server(served):
    """--under, --since/--until, --modality, --all-copies and --dedup give through the server what they give locally,
    and the same fields work in the HTTP API."""
    index = ["--index", str(served.photos_index)]
    cases = (
        ["--modality", "text"],
        ["--under", str(served.photos), "--since", "2000-01-01", "--until", "2100"],
        ["--since", "2100"],
        ["--all-copies"],
        ["--dedup", "0.5"],
    )
    for extra in cases:
        args = ["search", "a cup of coffee", "--k", "5", "--json", *index, *extra]
        local = runner.invoke(app, args)
        remote = runner.invoke(app, [*args, "--server", served.url])
        assert local.exit_code == 0 and remote.exit_code == 0, (extra, local.output, remote.output)
        _same_document(remote.stdout, local.stdout)
    texts = json.loads(runner.invoke(app, ["search", "coffee", "--modality", "text", "--json", *index]).stdout)
    assert {h["modality"] for h in texts["hits"]} == {"text"} and len(texts["hits"]) == 2
    status, document = served.client.search(q="coffee", modality="text", since="2000-01", until="2100", k=5)
    assert status == 200 and [h["id"] for h in document["hits"]] == [h["id"] for h in texts["hits"]]
    status, error = served.client.search(q="coffee", since="soon")
    assert status == 400 and error["error"].startswith("since: expected a date")  # the field, not the CLI's flag
    status, error = served.client.search(q="coffee", under="/nowhere/at/all")
    assert status == 400 and error["error"].startswith("under /nowhere/at/all: index")
    status, error = served.client.search(q="coffee", dedup="2")
    assert status == 400 and error["error"].startswith("dedup is a cosine similarity")
    body = json.dumps({"q": "coffee", "all_copies": True, "modality": "text"}).encode()
    status, document = served.client.json("/api/search", data=body, headers={"Content-Type": "application/json"})
    assert status == 200 and document["filters"]["all_copies"] is True and document["hits"]
    status, error = served.client.search(q="coffee", all_copies="maybe")
    assert status == 400 and "all_copies must be true or false" in error["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_is_a_one_line_error():
    url = f"http://127.0.0.1:{_free_port()}"
    result = runner.invoke(app, ["search", "a cat", "--server", url])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"retrv: error: no retrv server answers at {url} (")
    assert "start one with `retrv serve`" in result.stderr and result.stderr.count("\n") == 1


def test_search_through_the_server_imports_no_model_or_database(served):
    probe = (
        "import sys\n"
        "from retrv.cli.app import main\n"
        f"sys.argv = ['retrv', 'search', 'a cat', '--server', {served.url!r}, '-f']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted({'torch', 'transformers', 'lancedb', 'faiss', 'numpy'} & set(sys.modules))\n"
        "print('heavy:', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "heavy: []" in done.stderr, done.stderr
    assert len(done.stdout.splitlines()) == 9


def test_serving_another_address_needs_a_token_or_insecure(served):
    result = runner.invoke(app, ["serve", "--index", str(served.photos_index), "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "--host 0.0.0.0 serves every machine" in result.stderr and "--token" in result.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    result = runner.invoke(app, ["serve", "--index", str(served.photos_index), "--port", str(port)])
    busy.close()
    assert result.exit_code == 1 and result.stderr.startswith(f"retrv: error: cannot listen on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "[::1]"])
def test_loopback_addresses_need_no_token(host):
    from retrv.serve.run import check_binding

    check_binding(host, token=None, insecure=False)


def test_ctrl_c_stops_the_server_cleanly(served):
    serve = [*RETRV, "serve", "--index", str(served.photos_index), "--port", "0", "--token", "t0ken"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()  # printed once the models are loaded
        assert url.startswith("http://127.0.0.1:") and url.endswith("/#token=t0ken"), process.stderr.read()
        base = url.split("#")[0]
        request = urllib.request.Request(base + "api/search?q=a+cat", headers={"Authorization": "Bearer t0ken"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["schema"] == "retrv.search/1"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr.rstrip().endswith("retrv: server stopped") and "Traceback" not in stderr
