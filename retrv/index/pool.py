"""Indexing a dataset's candidate pool: items that already carry their text and image path.

Where `build.py` walks folders, this takes `Item`s (M-BEIR candidates: text, image or both) and
writes them in batches, one Lance version per batch. Incremental by id: an item whose stored
`content_hash` (a hash of its text and image path) is unchanged is skipped, so an interrupted
pool build resumes where it stopped. Images are decoded on loader threads while the model runs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from retrv.items import Item
from retrv.progress import ProgressCallback, emit

if TYPE_CHECKING:
    import numpy as np

    from retrv.encoders.base import Encoder
    from retrv.index.store import Store


@dataclass
class PoolReport:
    added: int = 0
    unchanged: int = 0
    encoded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0


def item_fingerprint(item: Item) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{item.modality}\0{item.text or ''}\0{item.image_path or ''}".encode())
    return digest.hexdigest()


def add_items(
    store: Store,
    encoder: Encoder,
    items: Sequence[Item],
    *,
    batch_size: int = 32,
    loader_threads: int = 2,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PoolReport:
    """Embed and store `items` (ids must be unique), skipping those already stored unchanged."""
    started = time.perf_counter()
    report = PoolReport()
    stored = {state.id: state.content_hash for state in store.file_states().values()} if store.count() else {}
    todo = []
    for item in items:
        fingerprint = item_fingerprint(item)
        if stored.get(item.id) == fingerprint:
            report.unchanged += 1
        else:
            todo.append(replace(item, content_hash=fingerprint))
    emit(progress, "encode", 0, len(todo))
    with ThreadPoolExecutor(max_workers=max(1, loader_threads)) as pool:
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        pending = pool.submit(_prepare, encoder, batches[0]) if batches else None
        for n, batch in enumerate(batches):
            if should_stop is not None and should_stop():
                break
            assert pending is not None
            prepared = pending.result()
            pending = pool.submit(_prepare, encoder, batches[n + 1]) if n + 1 < len(batches) else None
            kept, vectors = _encode(encoder, batch, prepared, report)
            if kept:
                store.upsert(kept, vectors)
                report.added += len(kept)
                report.encoded += len(kept)
            emit(progress, "encode", min((n + 1) * batch_size, len(todo)), len(todo))
    report.seconds = time.perf_counter() - started
    return report


def _prepare(encoder: Encoder, batch: list[Item]) -> list[Any]:
    """Decode and preprocess each item's image on a loader thread (None for text-only or failures)."""
    from retrv.images import load_image
    from retrv.scan import SkipFile

    prepared: list[Any] = []
    for item in batch:
        if item.image_path is None or "image" not in encoder.modalities:
            prepared.append(None)
            continue
        try:
            prepared.append(encoder.preprocess(load_image(item.image_path)))
        except SkipFile as e:
            prepared.append(e)
    return prepared


def _encode(
    encoder: Encoder, batch: list[Item], prepared: list[Any], report: PoolReport
) -> tuple[list[Item], np.ndarray]:
    import numpy as np

    from retrv.encoders.base import combine
    from retrv.scan import SkipFile

    kept, pixels, texts = [], [], []
    for item, pix in zip(batch, prepared):
        if isinstance(pix, SkipFile):
            report.skipped.append((item.id, str(pix)))
            continue
        kept.append((item, pix))
    image_rows = [i for i, (item, pix) in enumerate(kept) if pix is not None]
    text_rows = [i for i, (item, _) in enumerate(kept) if item.text]
    vectors = np.zeros((len(kept), encoder.dim), dtype=np.float32)
    if image_rows:
        pixels = [kept[i][1] for i in image_rows]
        vectors[image_rows] = encoder.encode_pixels(pixels)
    if text_rows:
        texts = [kept[i][0].text or "" for i in text_rows]
        text_vectors = encoder.encode_texts(texts)
        both = set(image_rows)
        for row, vector in zip(text_rows, text_vectors):
            vectors[row] = combine(vectors[row], vector) if row in both else vector
    missing = [i for i, (item, pix) in enumerate(kept) if pix is None and not item.text]
    for i in missing:
        reason = "the encoder cannot embed images" if kept[i][0].image_path else "no text and no image"
        report.skipped.append((kept[i][0].id, reason))
    keep = [i for i in range(len(kept)) if i not in set(missing)]
    return [kept[i][0] for i in keep], vectors[keep]
