"""`build-index --ray`: the encode step on a local Ray cluster started here, against a local build of the same
folder (ids, items, vectors), incrementally, and with a worker killed mid-build."""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from retrv.index.build import build_index  # noqa: E402
from retrv.index.distributed import RayCluster, ray_encode_step  # noqa: E402
from retrv.index.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray instance on 127.0.0.1 with 2 CPUs for the whole module (starting one takes seconds)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield RayCluster(address="auto", workers=2)
    ray.shutdown()


def snapshot(store: Store) -> dict[str, tuple]:
    """id -> (the item's fields but its mtime, its vector) for every row."""
    keys, vectors = store.all_vectors()
    by_key = dict(zip(keys.tolist(), vectors))
    items = store.items_for_keys(keys.tolist())
    return {
        it.id: (it.source, it.modality, it.text, it.image_path, it.size, it.content_hash, by_key[k])
        for k, it in zip(keys.tolist(), items)
    }


def assert_same_index(local: Store, distributed: Store) -> None:
    a, b = snapshot(local), snapshot(distributed)
    assert sorted(a) == sorted(b)
    for item_id in a:
        assert a[item_id][:-1] == b[item_id][:-1]
        np.testing.assert_allclose(a[item_id][-1], b[item_id][-1], atol=1e-5)


def counts(report) -> tuple:
    return (
        report.added,
        report.updated,
        report.reused,
        report.removed,
        report.unchanged,
        report.encoded,
        report.skipped_by_reason(),
    )


def test_ray_build_equals_a_local_build_then_incrementally(ray_cluster, photo_dir, clip_encoder, new_store, make_photo):
    (photo_dir / "notes.txt").write_text("a note about the red photos")
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photo_dir / "dup.jpg").write_bytes((photo_dir / "p0.jpg").read_bytes())
    local, distributed = new_store(clip_encoder, "local"), new_store(clip_encoder, "ray")
    step = ray_encode_step(ray_cluster)
    first_local = build_index(local, clip_encoder, [photo_dir], batch_size=3)
    first_ray = build_index(distributed, clip_encoder, [photo_dir], batch_size=3, encode=step)
    assert counts(first_ray) == counts(first_local)
    assert (
        first_ray.added == 8
        and first_ray.encoded == 7
        and first_ray.skipped_by_reason() == {"corrupt or truncated image": 1}
    )
    assert_same_index(local, distributed)

    make_photo(photo_dir / "p1.jpg", seed=41)  # changed
    os.utime(photo_dir / "p1.jpg", (1_000_000_000, 1_000_000_000))
    shutil.move(photo_dir / "p2.jpg", photo_dir / "renamed.jpg")  # reused
    (photo_dir / "sub" / "p4.jpg").unlink()  # removed
    make_photo(photo_dir / "new.jpg", seed=42)  # added
    second_local = build_index(local, clip_encoder, [photo_dir], batch_size=3)
    second_ray = build_index(distributed, clip_encoder, [photo_dir], batch_size=3, encode=step)
    assert counts(second_ray) == counts(second_local)
    assert (second_ray.added, second_ray.updated, second_ray.reused, second_ray.removed) == (2, 1, 1, 2)
    assert_same_index(local, distributed)


def test_ray_build_survives_a_worker_killed_mid_build(ray_cluster, tmp_path, clip_encoder, new_store, make_photo):
    import psutil

    folder = tmp_path / "many"
    for i in range(16):
        make_photo(folder / f"m{i:02d}.jpg", seed=100 + i)
    killed: list[int] = []

    def kill_an_encoder(event) -> None:
        if event.stage == "encode" and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "EncoderActor" in " ".join(proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    break

    distributed = new_store(clip_encoder, "ray")
    report = build_index(
        distributed, clip_encoder, [folder], batch_size=2, encode=ray_encode_step(ray_cluster), progress=kill_an_encoder
    )
    assert killed, "no encoder actor was found to kill"
    assert (report.added, report.encoded, report.skipped) == (16, 16, [])
    keys, _ = distributed.all_vectors()
    assert len(keys) == len(set(keys.tolist())) == 16
    local = new_store(clip_encoder, "local")
    build_index(local, clip_encoder, [folder], batch_size=2)
    assert_same_index(local, distributed)


def test_ray_through_the_cli_build_index_and_bench(ray_cluster, photo_dir, tiny_clip_dir, tmp_path):
    """`--ray` joins the cluster this process already runs; the reports equal those of a local run."""
    import json

    from typer.testing import CliRunner

    from retrv.cli.app import app
    from retrv.data.synth import SynthConfig, generate

    runner = CliRunner()

    def run(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--json", "-q"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    encoder = ["--encoder", f"clip:{tiny_clip_dir}", "--device", "cpu"]
    local = run("build-index", str(photo_dir), "--index", str(tmp_path / "local"), *encoder)
    distributed = run(
        "build-index", str(photo_dir), "--index", str(tmp_path / "ray"), *encoder, "--ray", "--ray-workers", "1"
    )
    fields = ("added", "encoded", "reused", "skipped_by_reason")
    assert [distributed[f] for f in fields] == [local[f] for f in fields] and distributed["added"] == 6

    world = generate(tmp_path / "world", SynthConfig(seed=11, size=3, cot_variants=1))
    bench = ("bench", "mbeir", str(world), *encoder, "--no-instructions", "--pool", "global", "--limit", "3")
    on_ray = run(*bench, "--index-dir", str(tmp_path / "bench-ray"), "--ray", "--ray-workers", "1")
    here = run(*bench, "--index-dir", str(tmp_path / "bench-local"))
    assert on_ray["metrics"] == here["metrics"] and on_ray["queries_run"] == here["queries_run"] > 0


def test_ray_build_stopped_keeps_what_it_committed_and_resumes(
    ray_cluster, tmp_path, clip_encoder, new_store, make_photo
):
    folder = tmp_path / "stop"
    for i in range(12):
        make_photo(folder / f"s{i:02d}.jpg", seed=300 + i)
    store = new_store(clip_encoder, "ray")
    writes: list[int] = []
    stopped = build_index(
        store,
        clip_encoder,
        [folder],
        batch_size=2,
        encode=ray_encode_step(RayCluster(address="auto", workers=1)),
        progress=lambda event: writes.append(event.done) if event.stage == "encode" else None,
        should_stop=lambda: bool(writes),  # Ctrl-C after the first committed batch
    )
    assert stopped.stopped and 0 < stopped.added < 12 and store.count() == stopped.added
    resumed = build_index(store, clip_encoder, [folder], batch_size=2)  # resumable by any build, local here
    assert (resumed.unchanged, resumed.added, resumed.stopped) == (stopped.added, 12 - stopped.added, False)
    keys, _ = store.all_vectors()
    assert len(set(keys.tolist())) == len(keys) == 12


def test_ray_fills_the_shards_of_an_on_disk_ann_as_a_local_build_does(ray_cluster, tmp_path, monkeypatch):
    from retrv.index import ann as ann_module
    from retrv.index.ann import AnnIndex
    from retrv.index.distributed import ray_shard_add
    from retrv.items import Item

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 6_000)] + rng.standard_normal((6_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = Store.create(tmp_path / "idx", encoder_spec="x", dim=32)
    store.upsert([Item(id=f"v{i}", source=f"/v/{i}", modality="text") for i in range(6_000)], vectors)
    monkeypatch.setattr(ann_module, "_SHARD_ROWS", 2500)  # three shards
    built = {}
    for where, add_shards in (("here", None), ("ray", ray_shard_add(ray_cluster))):
        folder = tmp_path / f"ann-{where}"
        monkeypatch.setattr(Store, "ann_dir", property(lambda self, folder=folder: folder))
        built[where] = AnnIndex.load_or_build(store, budget=150_000, add_shards=add_shards)
        assert built[where].plan.mmap and (folder / f"v{store.version()}.ivfpq.ivfdata").is_file()
    queries = vectors[:20]
    np.testing.assert_array_equal(built["ray"].labels, built["here"].labels)
    np.testing.assert_array_equal(built["ray"].search(queries, 10)[1], built["here"].search(queries, 10)[1])


def test_ray_address_where_nothing_listens_is_a_one_line_error(photo_dir, tmp_path):
    """Ray retries an address where nothing listens for minutes, deaf to Ctrl-C: retrv says so at once."""
    from typer.testing import CliRunner

    from retrv.cli.app import app
    from retrv.errors import RetrvError
    from retrv.index.distributed import connect

    with pytest.raises(RetrvError, match="expected auto, HOST:PORT"):
        connect(RayCluster(address="nowhere"))
    result = CliRunner().invoke(
        app, ["build-index", str(photo_dir), "--index", str(tmp_path / "i"), "--ray", "--ray-address", "127.0.0.1:1"]
    )
    assert result.exit_code == 1 and "no Ray cluster answers there" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "i").exists()


def test_ray_errors_of_its_raylets_go_to_stderr_not_stdout(ray_cluster, capsys):
    """A killed task's "(raylet) …" message must not land among the results on stdout (`--json`)."""
    from ray._private import worker

    from retrv.index.distributed import connect

    connect(ray_cluster)
    worker.print_to_stdstream({"lines": ["Task failed: killed by ray.kill"], "pid": "raylet", "is_err": False}, False)
    captured = capsys.readouterr()
    assert "killed by ray.kill" in captured.err and "killed by ray.kill" not in captured.out
