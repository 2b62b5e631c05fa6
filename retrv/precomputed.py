"""Rows a reranker precomputes per item, kept in the index beside the items: for reason mode the ICM tokens.

A reranker that reads such rows names its side table (`Reranker.precomputed_table`, e.g. `icm_<checkpoint
id>`, so a changed reasoner never reads another's rows) and computes them (`precompute(items)`). This module
is where the index and the reranker meet over those rows; only the engine and `retrv compress` use it:

- `compress_index` (`retrv compress`) brings the table up to date with the items: each row carries a
  fingerprint of the item's content hash, so unchanged items are skipped, changed ones recomputed (an image
  rewritten in place has a new content hash), rows of items gone from the index removed. One `side_upsert`
  per batch makes it resumable: after Ctrl-C (`should_stop`) the next run only computes what is left.
- `attach_rows` (the engine, per query) hands each candidate its row when the row is current; a candidate
  without one is computed by the reranker itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from retrv.errors import CompressError, FeatureError
from retrv.progress import ProgressCallback, emit

if TYPE_CHECKING:
    from retrv.index.store import Store
    from retrv.items import Item
    from retrv.rerank.base import Candidate, Precomputing, Reranker

FINGERPRINT_BYTES = 16
_READ_CHUNK = 1024  # rows per side_get / store.get call while comparing fingerprints


@dataclass
class CompressReport:
    table: str
    total: int  # items in the index
    computed: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item id, why), e.g. an unreadable image
    interrupted: bool = False
    dropped_tables: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.computed - self.unchanged - len(self.failed)


def item_fingerprint(item: Item) -> np.ndarray:
    """(16,) uint8 of the item's content hash: it changes whenever the item's content does."""
    digest = hashlib.blake2b(item.content_hash.encode("utf-8"), digest_size=FINGERPRINT_BYTES).digest()
    return np.frombuffer(digest, dtype=np.uint8).copy()


def attach_rows(store: Store, reranker: Reranker, candidates: Sequence[Candidate]) -> None:
    """Give each candidate its precomputed row (`Candidate.precomputed`) when the index holds a current one."""
    table = getattr(reranker, "precomputed_table", None)
    if not table or table not in store.side_tables():
        return
    rows = store.side_get(table, [c.item.id for c in candidates])
    for c in candidates:
        row = rows.get(c.item.id)
        # a row written before the item changed is stale: the reranker computes it instead
        if row is not None and "fingerprint" in row and np.array_equal(row["fingerprint"], item_fingerprint(c.item)):
            c.precomputed = {name: value for name, value in row.items() if name != "fingerprint"}


def compress_index(
    store: Store,
    reranker: Precomputing,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    drop_stale: bool = False,
) -> CompressReport:
    """Bring the reranker's table up to date with the items of `store` (see the module doc).

    `should_stop` is polled before each batch (the CLI sets it on Ctrl-C): what was written stays.
    `drop_stale` also drops the tables of other checkpoints with the same prefix.
    """
    table = reranker.precomputed_table
    if not table:
        raise CompressError(f"the {reranker.mode} reranker keeps no precomputed rows; nothing to compress")
    if batch_size < 1:
        raise CompressError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    ids = sorted(state.id for state in store.file_states().values())
    report = CompressReport(table=table, total=len(ids))
    if drop_stale:
        prefix = table.split("_", 1)[0] + "_"
        for name in store.side_tables():
            if name.startswith(prefix) and name != table:
                store.side_drop(name)
                report.dropped_tables.append(name)

    stored = store.side_ids(table)
    gone = stored - set(ids)
    if gone:
        store.side_delete(table, sorted(gone))
        report.removed = len(gone)

    todo: list[Item] = []
    for start in range(0, len(ids), _READ_CHUNK):
        chunk = ids[start : start + _READ_CHUNK]
        items = store.get(chunk)
        known = [i for i in chunk if i in stored]
        have = store.side_get(table, known) if known else {}
        for item in items:
            row = have.get(item.id)
            if row is not None and np.array_equal(row["fingerprint"].astype(np.uint8), item_fingerprint(item)):
                report.unchanged += 1
            else:
                todo.append(item)
        emit(progress, "compress-check", min(start + len(chunk), len(ids)), len(ids))

    emit(progress, "compress", 0, len(todo), f"{report.unchanged} unchanged, {len(todo)} to compute")
    for start in range(0, len(todo), batch_size):
        if should_stop is not None and should_stop():
            report.interrupted = True
            break
        batch = todo[start : start + batch_size]
        ok, rows = _compute_batch(reranker, batch, report)
        if ok:
            rows["fingerprint"] = np.stack([item_fingerprint(it) for it in ok])
            store.side_upsert(table, [it.id for it in ok], rows)
            report.computed += len(ok)
        emit(progress, "compress", min(start + len(batch), len(todo)), len(todo))
    report.seconds = time.perf_counter() - started
    return report


def _compute_batch(
    reranker: Precomputing, batch: list[Item], report: CompressReport
) -> tuple[list[Item], dict[str, np.ndarray]]:
    """The batch's rows; an unreadable item is recorded in `report.failed` and the rest still computed."""
    try:
        return batch, reranker.precompute(batch)
    except FeatureError:
        pass
    ok: list[Item] = []
    parts: list[dict[str, np.ndarray]] = []
    for item in batch:
        try:
            parts.append(reranker.precompute([item]))
            ok.append(item)
        except FeatureError as exc:
            report.failed.append((item.id, str(exc)))
    if not ok:
        return [], {}
    return ok, {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
