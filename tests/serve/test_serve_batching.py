"""The server's sharing of warm models: encoder calls that wait run as one batch, the reasoner's queue is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from retrv.errors import ServerBusyError
from retrv.serve.batching import BatchingEncoder, ResolveQueue


class _Gated:
    """The real encoder, whose first call waits for a gate: the calls made meanwhile queue behind it."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.spec, self.dim, self.modalities, self.device = encoder.spec, encoder.dim, encoder.modalities, "cpu"
        self.gate = threading.Event()
        self.batches: list[int] = []

    def encode_texts(self, texts):
        self.gate.wait(timeout=60)
        self.batches.append(len(texts))
        return self.encoder.encode_texts(texts)


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_calls_made_while_the_model_is_busy_run_as_one_batch(served):
    lite = served.service.encoders[0].encoder
    gated = _Gated(lite)
    batcher = BatchingEncoder(gated, max_batch=32)  # type: ignore[arg-type]
    words = ["a cat", "a cup of coffee", "a rocket", "a red flower", "a temple", "a portrait"]
    results: dict[str, np.ndarray] = {}

    def encode(w: str) -> None:
        results[w] = batcher.encode_texts([w])[0]

    first = threading.Thread(target=encode, args=(words[0],))
    first.start()
    _wait_until(lambda: not batcher.waiting)  # the first call runs, held at the gate
    rest = [threading.Thread(target=encode, args=(w,)) for w in words[1:]]
    for t in rest:
        t.start()
    _wait_until(lambda: batcher.waiting == len(rest))
    gated.gate.set()
    for t in [first, *rest]:
        t.join(timeout=60)
    assert gated.batches == [1, len(rest)]
    assert batcher.stats.to_dict() == {"calls": len(words), "batches": 2, "largest_batch": len(rest)}
    for w in words:  # each caller gets its own row, as if it had run alone
        assert np.allclose(results[w], lite.encode_texts([w])[0], atol=1e-5)


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs(served):
    batcher = BatchingEncoder(served.service.encoders[0].encoder)
    with pytest.raises(TypeError):
        batcher.encode_texts([None])  # type: ignore[list-item]
    assert batcher.encode_texts(["a cat"]).shape == (1, batcher.dim)


def test_the_reasoner_queue_is_bounded():
    queue = ResolveQueue(max_waiting=1, timeout=30)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        with queue.turn():
            holding.set()
            release.wait(timeout=30)
            order.append("first")

    def wait_then_run() -> None:
        with queue.turn():
            order.append("second")

    first = threading.Thread(target=hold)
    first.start()
    holding.wait(timeout=30)
    second = threading.Thread(target=wait_then_run)
    second.start()
    _wait_until(lambda: queue.waiting == 1)
    started = time.monotonic()
    with pytest.raises(ServerBusyError, match="1 requests already wait"), queue.turn():
        pass
    assert time.monotonic() - started < 1  # refused at once, not after a wait
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert order == ["first", "second"] and queue.waiting == 0


def test_a_wait_for_the_reasoner_ends_in_time():
    queue = ResolveQueue(max_waiting=4, timeout=0.05)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with queue.turn():
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(timeout=30)
    with pytest.raises(ServerBusyError, match="stayed busy"), queue.turn():
        pass
    release.set()
    holder.join(timeout=30)
