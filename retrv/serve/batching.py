"""Sharing the warm models between concurrent requests.

`BatchingEncoder` puts a micro-batcher in front of an encoder: a call that arrives while the model is busy
waits, and when the model is free the waiting calls of one kind run as one batch (up to `max_batch` inputs).
A lone query runs at once, with no gathering delay; under load, queries ride together. Only one batch runs
at a time, so the model is never called from two threads at once. On the CPU a small batch runs on one torch
thread: for a few short queries the intra-op threads mostly wait for each other, and on a busy machine for the
cores (MiniLM, one query, load average 8 on 2 cores: 18 ms on one thread, 71 ms on two; docs/benchmarks.md §8).

`ResolveQueue` lets one reranker resolve run at a time on its device, with at most `max_waiting` requests
waiting for their turn; one more is refused at once (`ServerBusyError`, HTTP 503) instead of piling up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retrv.devices import one_torch_thread
from retrv.errors import ServerBusyError

ONE_THREAD_MAX_INPUTS = 8  # a batch of at most this many inputs runs on one torch thread (CPU only)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from retrv.encoders.base import Encoder
    from retrv.items import Query
    from retrv.rerank.base import Candidate, Reranker, RerankResult


@dataclass(eq=False)
class _Call:
    method: str  # the encoder method: "encode_texts", "encode_images" or "encode_pixels"
    inputs: list[Any]
    done: bool = False
    result: np.ndarray | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    calls: int = 0
    batches: int = 0
    largest: int = 0  # the most calls one batch served

    def to_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "batches": self.batches, "largest_batch": self.largest}


class BatchingEncoder:
    """An `Encoder` that serves concurrent callers from one model, batching their calls (module doc)."""

    def __init__(self, encoder: Encoder, *, max_batch: int = 32) -> None:
        self.encoder = encoder
        self.spec = encoder.spec
        self.dim = encoder.dim
        self.modalities = encoder.modalities
        self.device = encoder.device
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Call] = deque()
        self._busy = False

    @property
    def waiting(self) -> int:
        """Calls queued for the next batch."""
        return len(self._queue)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._submit("encode_texts", texts)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._submit("encode_images", images)

    def encode_pixels(self, batch: list[Any]) -> np.ndarray:
        return self._submit("encode_pixels", batch)

    def preprocess(self, image: Image.Image) -> Any:
        return self.encoder.preprocess(image)  # CPU only and thread-safe (the Encoder protocol)

    def _submit(self, method: str, inputs: Sequence[Any]) -> np.ndarray:
        call = _Call(method, list(inputs))
        with self._cond:
            self._queue.append(call)
            while not call.done:
                if self._busy:
                    self._cond.wait()
                    continue
                batch = self._take()  # this thread runs the next batch, which may or may not hold its own call
                self._busy = True
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _take(self) -> list[_Call]:
        """The oldest waiting call and the later ones of its kind, up to `max_batch` inputs (at least one call)."""
        method = self._queue[0].method
        batch: list[_Call] = []
        size = 0
        for call in list(self._queue):
            if call.method != method or (batch and size + len(call.inputs) > self.max_batch):
                continue
            batch.append(call)
            size += len(call.inputs)
            self._queue.remove(call)
        return batch

    def _run(self, batch: list[_Call]) -> None:
        inputs = [x for call in batch for x in call.inputs]
        small = self.device == "cpu" and len(inputs) <= ONE_THREAD_MAX_INPUTS
        try:
            with one_torch_thread() if small else nullcontext():
                vectors = getattr(self.encoder, batch[0].method)(inputs)
        except BaseException as e:  # every caller of the batch gets the error, in its own thread
            for call in batch:
                call.error, call.done = e, True
            return
        start = 0
        for call in batch:
            call.result, call.done = vectors[start : start + len(call.inputs)], True
            start += len(call.inputs)
        self.stats.calls += len(batch)
        self.stats.batches += 1
        self.stats.largest = max(self.stats.largest, len(batch))


class ResolveQueue:
    """One resolve at a time, at most `max_waiting` waiting (module doc); a wait ends after `timeout` seconds."""

    def __init__(self, *, max_waiting: int = 8, timeout: float = 120.0) -> None:
        self.max_waiting = max_waiting
        self.timeout = timeout
        self._turn = threading.Lock()
        self._state = threading.Lock()
        self._present = 0  # the one resolving plus those waiting

    @property
    def waiting(self) -> int:
        return max(0, self._present - 1)

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._state:
            if self._present > self.max_waiting:
                raise ServerBusyError(
                    f"the reasoner is busy ({self.max_waiting} requests already wait for it); try again shortly"
                )
            self._present += 1
        try:
            if not self._turn.acquire(timeout=self.timeout):
                raise ServerBusyError(f"the reasoner stayed busy for {self.timeout:g} s; try again shortly")
            try:
                yield
            finally:
                self._turn.release()
        finally:
            with self._state:
                self._present -= 1


@dataclass
class QueuedReranker:
    """A `Reranker` whose resolves take turns through a `ResolveQueue`."""

    reranker: Reranker
    queue: ResolveQueue = field(default_factory=ResolveQueue)

    @property
    def mode(self) -> str:
        return self.reranker.mode

    @property
    def calibrated(self) -> bool:
        return self.reranker.calibrated

    @property
    def precomputed_table(self) -> str | None:
        return self.reranker.precomputed_table

    def rerank(self, query: Query, candidates: list[Candidate]) -> RerankResult:
        with self.queue.turn():
            return self.reranker.rerank(query, candidates)
