"""The encode step of a build on a Ray cluster (`retrv build-index --ray`, `retrv bench mbeir --ray`).

Everything else of a build stays where it is (`retrv.index.build`): the driver scans, decides what is new or
changed, hashes it and reuses the vectors of content it already holds, and commits every batch that comes back
as one Lance version, so an interrupted build keeps what was committed and the next one picks up from there.
Only the jobs that need the model go to Ray Data:

- decode: tasks read and decode each image (`retrv.images.load_image`, the same guard and draft size as a local
  build); an image that cannot be used comes back as a skip with its reason;
- encode: an actor pool (`map_batches` with a class), one encoder per actor, loaded once from the index's spec;
  one GPU per actor when the cluster has GPUs, a share of the CPUs otherwise. Preprocessing (resize, crop,
  normalise) runs in the actor, with the encoder's own image processor, so the vectors equal a local build's.

A worker that dies is restarted by Ray and its batch retried (Ray Data's actors have unlimited restarts and task
retries); a batch is committed once, by id, so a retry neither loses nor duplicates a row. The files must be
readable at the same paths on every node (a shared or network file system), and retrv installed there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrv.errors import RetrvError
from retrv.index.build import BuildOptions, Encoded, EncodeJob, EncodeStep, Failed, embed_batch
from retrv.scan import SkipFile

if TYPE_CHECKING:
    import numpy as np

    from retrv.encoders.base import Encoder
    from retrv.index.ann import ShardAdd
    from retrv.index.store import Store

LOCAL = "local"
AUTO = "auto"
# Passed to the workers so that they load models as the driver does (offline, same caches).
DECODE_SHARE_LEFT = 0.9
_WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "RETRV_CACHE_DIR", "RUST_LOG")


@dataclass(frozen=True)
class RayCluster:
    """Where the encode step runs: `address` "local" starts a Ray instance on this machine (stopped when the
    process exits), "auto" joins the cluster running here (`ray start --head`), else a Ray address
    (`ray://head:10001`). `workers` encoder actors (default: one per GPU, else one per CPU but one)."""

    address: str = LOCAL
    workers: int | None = None


def connect(cluster: RayCluster) -> dict[str, float]:
    """Start or join the cluster (once per process); its resources (CPU, GPU, ...)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to anyone
    import ray

    if cluster.address != LOCAL:
        _check_reachable(cluster.address)
    if not ray.is_initialized():
        env = {name: os.environ[name] for name in _WORKER_ENV if name in os.environ}
        options: dict[str, Any] = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        if cluster.address != LOCAL:
            options = {}
        try:
            ray.init(
                address=None if cluster.address == LOCAL else cluster.address,
                runtime_env={"env_vars": env},
                logging_level=logging.WARNING,
                log_to_driver=False,
                **options,
            )
        except ConnectionError:  # "auto" with no cluster running here
            raise RetrvError(
                f"--ray-address {cluster.address}: no Ray cluster runs on this machine; start one with "
                "`ray start --head`, or leave out --ray-address for one started for this run"
            ) from None
    _raylet_errors_to_stderr()
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per execution otherwise
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # progress is the driver's, through the build's callback
    context.print_on_execution_start = False
    return dict(ray.cluster_resources())


def _raylet_errors_to_stderr() -> None:
    """Ray's driver prints the errors its raylets publish (a task killed, a worker lost) on stdout, even with
    `log_to_driver=False`; stdout holds retrv's results (`--json`), so they go to stderr instead."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "retrv_to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.retrv_to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A one-line error at once for a HOST:PORT (or ray://HOST:PORT) where nothing listens: Ray itself retries
    such an address for minutes, deaf to Ctrl-C."""
    import socket

    if address == AUTO:
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise RetrvError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RetrvError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def ray_encode_step(cluster: RayCluster) -> EncodeStep:
    """An EncodeStep (`BuildOptions.encode`) that encodes on `cluster`."""

    def step(jobs: list[EncodeJob], encoder: Encoder, options: BuildOptions) -> Iterator[Encoded | Failed]:
        if not jobs:
            return
        import numpy as np
        import ray.data

        resources = connect(cluster)
        gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        workers = cluster.workers or (gpus if gpus else max(1, int(cpus) - 1))
        # On CPUs the actors and the decode tasks share the cores. Decoding is about a tenth of the work (docs/
        # benchmarks.md §1), so the actors split 90% of the CPUs and the decode tasks run in the rest: actors
        # holding every CPU would starve the tasks that feed them. (Tasks asking for the same resources as the
        # actors would also be fused into them by Ray Data.)
        share = 1.0 if gpus else max(DECODE_SHARE_LEFT * cpus / workers, 0.01)
        decode_cpus = 1.0 if gpus else max((1 - DECODE_SHARE_LEFT) * cpus / 2, 0.01)
        image_size = getattr(encoder, "image_size", None)
        rows = [
            {
                "position": i,
                "image": job.image_path or "",
                "chunks": list(job.document.chunks) if job.document is not None else [],
                "has_text": job.document is not None,
            }
            for i, job in enumerate(jobs)
        ]
        # Enough blocks to keep every actor fed while others decode, few enough that per-block costs stay small.
        blocks = max(1, min(len(rows) // options.batch_size, 32 * workers))
        dataset: Any = ray.data.from_items(rows, override_num_blocks=blocks)  # Any: Ray's stubs are narrower
        dataset = dataset.map_batches(
            decode_images,
            fn_kwargs={"max_megapixels": options.max_megapixels, "draft": 2 * int(image_size) if image_size else None},
            batch_size=options.batch_size,
            batch_format="pandas",
            num_cpus=decode_cpus,
        )
        dataset = dataset.map_batches(
            EncoderActor,
            fn_constructor_kwargs={
                "spec": encoder.spec,
                "device": "cuda" if gpus else "cpu",
                "threads": max(1, round(share)),
            },
            batch_size=options.batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if gpus else 0,
            num_cpus=share,
        )
        batch: Any
        for batch in dataset.iter_batches(batch_size=None, batch_format="pandas"):
            reasons = batch["reason"].tolist()
            positions = batch["position"].astype(int).tolist()
            for position, reason, detail in zip(positions, reasons, batch["detail"].tolist(), strict=True):
                if reason:
                    yield Failed(position, SkipFile(reason, str(detail)))
            done = [i for i, reason in enumerate(reasons) if not reason]
            if done:
                vectors = np.stack([np.frombuffer(v, dtype=np.float32) for v in batch["vector"].iloc[done]])
                yield Encoded([positions[i] for i in done], vectors)

    return step


def decode_images(batch: Any, *, max_megapixels: float, draft: int | None) -> Any:
    """The decode tasks: each row's image as RGB bytes (height x width x 3; none without an image), or the reason
    it cannot be used."""
    from retrv.images import load_image, pil_limits

    pixels, heights, widths, reasons, details = [], [], [], [], []
    with pil_limits(max_megapixels):
        for path in batch["image"]:
            data, height, width, reason, detail = b"", 0, 0, "", ""
            if path:
                try:
                    image = load_image(path, max_megapixels=max_megapixels, draft_size=draft)
                    data, (width, height) = image.tobytes(), image.size
                except SkipFile as e:
                    reason, detail = e.reason, e.detail or ""
            pixels.append(data)
            heights.append(height)
            widths.append(width)
            reasons.append(reason)
            details.append(detail)
    decoded = {"pixels": pixels, "height": heights, "width": widths, "reason": reasons, "detail": details}
    return batch.assign(**decoded).drop(columns=["image"])


def ray_shard_add(cluster: RayCluster) -> ShardAdd:
    """A ShardAdd (`AnnIndex.load_or_build(add_shards=...)`) whose shards are filled by Ray tasks, each reading
    its rows from the store (the same version, through its own connection: the index must be reachable from every
    node, e.g. on object storage) and sending the filled shard back through Ray's object store."""

    def add(store: Store, trained: bytes, ranges: list[tuple[int, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import ray

        connect(cluster)
        task = ray.remote(fill_shard)
        trained_ref = ray.put(trained)
        root, options, version = store.root, store.storage_options, store.version()
        refs = [task.remote(root, options, version, trained_ref, start, stop) for start, stop in ranges]
        for ref in refs:
            yield ray.get(ref)

    return add


def fill_shard(
    root: Any, storage_options: dict[str, str], version: int, trained: bytes, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """A Ray task: rows [start, stop) of the index's `version` added (under their positions) to a copy of the
    trained empty index; (their keys, the filled copy serialized)."""
    import faiss
    import numpy as np

    from retrv.index.store import Store

    store = Store.open(root, storage_options)
    store.checkout(version)
    keys, vectors = store.rows(start, stop)
    shard = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    shard.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.arange(start, stop, dtype=np.int64))
    return keys, faiss.serialize_index(shard)


class EncoderActor:
    """One encoder per actor, loaded once; each call preprocesses and embeds a batch (`build.embed_batch`)."""

    def __init__(self, spec: str, device: str, threads: int) -> None:
        import torch

        from retrv.encoders.registry import load_encoder

        torch.set_num_threads(threads)  # its share of the CPUs (Ray sets one thread for a fractional share)
        self.encoder = load_encoder(spec, device=device)

    def __call__(self, batch: Any) -> Any:
        from PIL import Image

        from retrv.index.documents import TextDocument

        usable = [not reason for reason in batch["reason"]]
        pixels = [
            self.encoder.preprocess(Image.frombytes("RGB", (int(w), int(h)), data)) if data else None
            for data, h, w, ok in zip(batch["pixels"], batch["height"], batch["width"], usable, strict=True)
            if ok
        ]
        documents = [
            TextDocument("", list(chunks), False) if has_text else None
            for chunks, has_text, ok in zip(batch["chunks"], batch["has_text"], usable, strict=True)
            if ok
        ]
        vectors = iter(embed_batch(self.encoder, pixels, documents) if pixels else [])
        column = [next(vectors).tobytes() if ok else b"" for ok in usable]  # float32 bytes: one Arrow type
        return batch.assign(vector=column).drop(columns=["pixels", "height", "width", "chunks"])
