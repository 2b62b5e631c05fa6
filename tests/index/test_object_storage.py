"""An index on object storage: build, search, incremental rebuild and info on s3://bucket/prefix, through the CLI,
against an S3 endpoint on 127.0.0.1 (moto's server, which speaks the S3 HTTP protocol to Lance's own client)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from typer.testing import CliRunner

moto_server = pytest.importorskip("moto.server")

from retrv.cli.app import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A bucket on an S3 server on 127.0.0.1 (a free port); the credentials come from the usual variables."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="retrv-test")
        yield endpoint
    server.stop()


def cli(*args: str) -> object:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_object_storage_build_search_rebuild_info(s3_endpoint, sample_photos_dir, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    shutil.copytree(sample_photos_dir, photos)
    uri = "s3://retrv-test/indexes/photos/"  # a trailing slash is the same index
    monkeypatch.setenv("RETRV_STORAGE_OPTIONS", f"aws_endpoint={s3_endpoint},allow_http=true")
    common = ["--index", uri, "--quiet"]

    first = json.loads(cli("build-index", str(photos), *common, "--encoder", "lite", "--json").stdout)
    assert first["index"] == uri.rstrip("/") and first["added"] == len(list(photos.iterdir()))

    hits = json.loads(cli("search", "a cup of coffee", *common, "--json", "--k", "3").stdout)["hits"]
    assert hits[0]["source"].endswith("coffee.jpg")

    (photos / "rocket.jpg").unlink()
    shutil.copy(photos / "chelsea.jpg", photos / "chelsea-copy.jpg")
    second = json.loads(cli("build-index", str(photos), *common, "--json").stdout)
    assert (second["added"], second["reused"], second["removed"], second["encoded"]) == (1, 1, 1, 0)

    info = json.loads(cli("info", "--index", uri, "--json").stdout)
    assert info["path"] == uri.rstrip("/") and info["items"] == len(list(photos.iterdir()))
    assert info["encoder"] == "lite" and info["size_bytes"] > 0
    assert info["ann"]["current"] is True and info["ann"]["kind"] == "flat"
    assert not info["ann"]["file"].startswith("s3://")  # the faiss cache is local, keyed by the table version

    text = cli("info", "--index", uri).stdout
    assert "cache of table version" in text and "expected memory" in text


def test_object_storage_missing_index_and_bad_endpoint_are_one_line_errors(s3_endpoint, monkeypatch):
    monkeypatch.setenv("RETRV_STORAGE_OPTIONS", f"aws_endpoint={s3_endpoint},allow_http=true")
    result = runner.invoke(app, ["info", "--index", "s3://retrv-test/nothing-here"])
    assert result.exit_code == 1 and "no index at s3://retrv-test/nothing-here" in result.stderr
    result = runner.invoke(app, ["index", "repair", "--index", "s3://retrv-test/nothing-here"])
    assert result.exit_code == 1 and "object storage" in result.stderr
    result = runner.invoke(app, ["info", "--index", "s3://retrv-test/x", "--storage-options", "no-equals-sign"])
    assert result.exit_code == 1 and "--storage-options" in result.stderr
    refused = "aws_endpoint=http://127.0.0.1:1,allow_http=true"  # nothing listens on port 1
    result = runner.invoke(app, ["info", "--index", "s3://retrv-test/x", "--storage-options", refused])
    assert result.exit_code == 1 and "could not be reached" in result.stderr and len(result.stderr.splitlines()) == 1


def test_object_storage_second_create_is_refused(s3_endpoint, monkeypatch):
    from retrv.errors import RetrvError
    from retrv.index.store import Store

    options = {"aws_endpoint": s3_endpoint, "allow_http": "true"}
    Store.create("s3://retrv-test/twice", encoder_spec="x", dim=4, storage_options=options)
    with pytest.raises(RetrvError, match="already exists"):
        Store.create("s3://retrv-test/twice", encoder_spec="x", dim=4, storage_options=options)
    assert Store.open("s3://retrv-test/twice", options).meta.dim == 4


def test_object_storage_filters_export_forget_compact(s3_endpoint, sample_photos_dir, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    for path in sample_photos_dir.iterdir():
        shutil.copy(path, photos / ("cats" if "chelsea" in path.name else "") / path.name)
    uri = "s3://retrv-test/indexes/everyday"
    common = ["--index", uri, "--quiet", "--storage-options", f"aws_endpoint={s3_endpoint},allow_http=true"]
    total = len(list(sample_photos_dir.iterdir()))
    cli("build-index", str(photos), *common, "--encoder", "lite")

    hits = json.loads(cli("search", "a cat", *common, "--under", str(photos / "cats"), "--json").stdout)["hits"]
    assert [h["source"] for h in hits] == [str(photos / "cats" / "chelsea.jpg")]
    assert json.loads(cli("search", "a cat", *common, "--since", "2999-01-01", "--json").stdout)["hits"] == []

    out = tmp_path / "items.parquet"
    exported = json.loads(cli("export", str(out), *common, "--json").stdout)
    assert exported["items"] == total and pq.read_table(out).num_rows == total

    forgotten = json.loads(cli("forget", str(photos / "cats"), *common, "--json").stdout)
    assert forgotten["forgotten"] == 1
    assert json.loads(cli("info", *common, "--json").stdout)["items"] == total - 1
    cli("index", "compact", *common)
    hits = json.loads(cli("search", "a cup of coffee", *common, "--json", "--k", "3").stdout)["hits"]
    assert hits[0]["source"].endswith("coffee.jpg")

    from retrv.config import load_settings
    from retrv.serve.service import SearchRequest, SearchService

    options = f"aws_endpoint={s3_endpoint},allow_http=true"
    service = SearchService.open(load_settings({"index": uri, "storage_options": options}))  # as `retrv serve`
    document = service.search(SearchRequest(q="a cup of coffee", k=3))
    assert document["hits"][0]["source"].endswith("coffee.jpg")
    thumbs = service.resolve(None).engine.index.store.local_folder("thumbs")
    assert not str(thumbs).startswith("s3:") and thumbs.parent.name == "thumbs"

    refused = runner.invoke(app, ["index", "rm", uri, "--yes"])
    assert refused.exit_code != 0 and "object storage" in refused.stderr


def test_object_storage_errors_come_down_to_their_cause():
    from retrv.index.store import object_store_cause

    missing = (
        'Invalid input, Failed to connect to namespace: IO { source: Generic { store: "S3", source: ListRequest { '
        "source: RetryError(RetryErrorImpl { method: GET, uri: Some(http://127.0.0.1:37495/nobucket?list-type=2), "
        'inner: Status { status: 404, body: Some("<?xml version=\\"1.0\\"?>\\n<Error><Code>NoSuchBucket</Code>'
        '<Message>The specified bucket does not exist</Message></Error>") } }) } }, location: Location { file: '
        '"/root/.cargo/registry/src/lance-io-13.0.0/src/object_store.rs", line: 1506 }'
    )
    assert object_store_cause(missing) == "NoSuchBucket: The specified bucket does not exist at http://127.0.0.1:37495"
    refused = (
        "RetryError(RetryErrorImpl { method: GET, uri: Some(http://127.0.0.1:5999/bkt?list-type=2), inner: Http("
        'HttpError { kind: Connect, source: ConnectError("tcp connect error", 127.0.0.1:5999, Os { code: 111, kind: '
        'ConnectionRefused, message: "Connection refused" }) }) })'
    )
    assert object_store_cause(refused) == "connection refused at http://127.0.0.1:5999"
    assert object_store_cause("Status { status: 403, body: None }") == "HTTP 403"
