"""`retrv compress`: precompute every item's ICM tokens into the side table `icm_<checkpoint-id>`.

For each item the reasoner reads its full tokens (`retrv.icm.features`: vision-tower output for the
image, token embeddings for the text), and the ICM pools them into the query-independent part of its
compressed form: one *content* token and M *memory* tokens (the relation token is made from the
memory tokens and the query at search time).

Side table rows: `content` (H,), `memory` (M, H), `fingerprint` (16,) uint8. Tokens are stored in
float32 when the reasoner runs float32 (exactly what search would compute) and float16 otherwise
(half the disk). The fingerprint hashes what the tokens depend on (content hash and text; without a
content hash, also image path, mtime and size), so the work is incremental: unchanged items are
skipped, changed ones recomputed, rows of items gone from the index removed. One `side_upsert` per
batch makes it resumable: after Ctrl-C (`should_stop`) the next run only computes what is left.
The table name carries the checkpoint id, so a changed reasoner writes a new table and never reads
stale tokens.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from retrv.errors import CompressError
from retrv.progress import ProgressCallback, emit

if TYPE_CHECKING:
    from retrv.index.store import Store
    from retrv.items import Item
    from retrv.rerank.checkpoint import LoadedReasoner

ICM_TABLE_PREFIX = "icm_"
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


def icm_table_name(checkpoint_id: str) -> str:
    return f"{ICM_TABLE_PREFIX}{checkpoint_id}"


def item_fingerprint(item: Item) -> np.ndarray:
    """(16,) uint8: changes whenever the item's full tokens could change."""
    key = f"{item.content_hash}\x00{item.text or ''}\x00"
    if not item.content_hash:
        key += f"{item.image_path or ''}\x00{item.mtime!r}\x00{item.size}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=FINGERPRINT_BYTES).digest()
    return np.frombuffer(digest, dtype=np.uint8).copy()


def compute_icm_rows(loaded: LoadedReasoner, items: Sequence[Item]) -> dict[str, np.ndarray]:
    """Content (B, H) and memory (B, M, H) tokens of `items`, as numpy in the storage dtype."""
    import torch

    from retrv.icm.features import full_tokens_batch
    from retrv.icm.module import pad_tokens

    icm = loaded.icm
    if icm is None:
        raise CompressError("this reasoner has no ICM")
    with torch.inference_mode():
        tokens = full_tokens_batch(loaded.model, loaded, list(items))
        padded, mask = pad_tokens(tokens)
        param = next(icm.parameters())
        padded, mask = padded.to(device=param.device, dtype=param.dtype), mask.to(param.device)
        content = icm.content(padded, mask)
        memory = icm.memory(padded, mask)
    store_dtype = np.float32 if content.dtype == torch.float32 else np.float16
    return {
        "content": content.float().cpu().numpy().astype(store_dtype),
        "memory": memory.float().cpu().numpy().astype(store_dtype),
    }


def _delete_side_rows(store: Store, table: str, ids: set[str]) -> None:
    """Remove rows of `ids` from a side table (rewrites the table if the store cannot delete rows)."""
    side_delete = getattr(store, "side_delete", None)
    if callable(side_delete):
        side_delete(table, sorted(ids))
        return
    keep = sorted(store.side_ids(table) - ids)
    rows = {}
    for start in range(0, len(keep), _READ_CHUNK):
        rows.update(store.side_get(table, keep[start : start + _READ_CHUNK]))
    store.side_drop(table)
    if keep:
        columns = {c: np.stack([rows[i][c] for i in keep]) for c in rows[keep[0]]}
        columns["fingerprint"] = columns["fingerprint"].astype(np.uint8)
        store.side_upsert(table, keep, columns)


def compress_index(
    store: Store,
    loaded: LoadedReasoner,
    *,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    drop_stale: bool = False,
) -> CompressReport:
    """Bring `icm_<loaded.checkpoint_id>` up to date with the items of `store`.

    `should_stop` is polled before each batch (the CLI sets it on Ctrl-C): what was written stays.
    `drop_stale` also drops the `icm_*` tables of other checkpoints.
    """
    if loaded.icm is None:
        raise CompressError(
            f"reasoner {loaded.config.base_model!r} (stage {loaded.config.stage}) has no ICM weights; "
            "compress needs a checkpoint trained by `retrv train` (stage icm or later)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    table = icm_table_name(loaded.checkpoint_id)
    ids = sorted(state.id for state in store.file_states().values())
    report = CompressReport(table=table, total=len(ids))
    if drop_stale:
        for name in store.side_tables():
            if name.startswith(ICM_TABLE_PREFIX) and name != table:
                store.side_drop(name)
                report.dropped_tables.append(name)

    stored = store.side_ids(table)
    gone = stored - set(ids)
    if gone:
        _delete_side_rows(store, table, gone)
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
        ok, rows = _compute_batch(loaded, batch, report)
        if ok:
            rows["fingerprint"] = np.stack([item_fingerprint(it) for it in ok])
            store.side_upsert(table, [it.id for it in ok], rows)
            report.computed += len(ok)
        emit(progress, "compress", min(start + len(batch), len(todo)), len(todo))
    report.seconds = time.perf_counter() - started
    return report


def _compute_batch(
    loaded: LoadedReasoner, batch: list[Item], report: CompressReport
) -> tuple[list[Item], dict[str, np.ndarray]]:
    """The batch's rows; an unreadable item is recorded in `report.failed` and the rest still computed."""
    from retrv.errors import FeatureError

    try:
        return batch, compute_icm_rows(loaded, batch)
    except FeatureError:
        pass
    ok: list[Item] = []
    parts: list[dict[str, np.ndarray]] = []
    for item in batch:
        try:
            parts.append(compute_icm_rows(loaded, [item]))
            ok.append(item)
        except FeatureError as exc:
            report.failed.append((item.id, str(exc)))
    if not ok:
        return [], {}
    return ok, {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
