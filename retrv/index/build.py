"""The incremental index build: folders in, one Lance version per written batch out.

1. Scan the paths (`retrv.scan`). A file whose (mtime, size) equals its stored row is unchanged
   and never opened.
2. Hash every new or changed file (blake2b-128 of its bytes, personalised with its kind so an
   image and a text never share a vector), on the loader threads; text documents are parsed
   in the same read.
3. A hash the store already holds (a renamed, copied or touched file) reuses the stored vector:
   no model call. Files sharing a hash within this build are encoded once.
4. The rest goes through the model. Images are decoded (`retrv.images`) and preprocessed
   on loader threads (at most two batches ahead) while the model runs on the calling thread; each batch is one
   `store.upsert`, so an interrupted build leaves every finished batch readable and the next
   build picks up where it stopped.
5. Rows under the given roots whose file is gone (or can no longer be read) are deleted; rows
   elsewhere in the index (another folder, a dataset) are left alone. A stopped build deletes nothing.

Bad input never stops a build: each file that cannot be used becomes a `Skip` with a reason.
Text documents follow the chunking rule of `retrv.index.documents` (one vector per document).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retrv.errors import RetrvError
from retrv.images import load_image, pil_limits
from retrv.index.documents import TextDocument, chunk_chars_for, embed_documents, parse_document
from retrv.items import Item
from retrv.progress import ProgressCallback, emit
from retrv.scan import (
    EMPTY_FILE,
    ENCODER_NO_IMAGES,
    ENCODER_NO_TEXT,
    PERMISSION_DENIED,
    UNREADABLE,
    VANISHED,
    FileEntry,
    Skip,
    SkipFile,
    is_under,
    resolve_roots,
    scan,
)

if TYPE_CHECKING:
    import numpy as np

    from retrv.encoders.base import Encoder
    from retrv.index.store import Store

HASH_BLOCK = 1 << 20
REUSE_BATCH = 1024  # rows per upsert when no model runs


def item_id(path: str) -> str:
    """The stable id of a file's item: blake2b-128 of its absolute path, in hex."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


@dataclass
class BuildReport:
    """What a build did. `added` + `updated` rows were written; each of them was either
    `encoded` (ran through the model) or `reused` (took the vector of a row with the same content)."""

    added: int = 0
    updated: int = 0
    reused: int = 0
    removed: int = 0
    unchanged: int = 0
    encoded: int = 0
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  # should_stop() asked to stop before the end; nothing was removed

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "reused": self.reused,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "encoded": self.encoded,
            "skipped": [{"path": s.path, "reason": s.reason, "detail": s.detail} for s in self.skipped],
            "skipped_by_reason": self.skipped_by_reason(),
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
        }


@dataclass
class _Work:
    entry: FileEntry
    existed: bool  # the store had a row for this path
    content_hash: str = ""
    document: TextDocument | None = None


class _Stopped(Exception):
    pass


def build_index(
    store: Store,
    encoder: Encoder,
    paths: Iterable[str | os.PathLike[str]],
    *,
    excludes: Iterable[str] = (),
    include_hidden: bool = False,
    batch_size: int = 32,
    loader_threads: int = 2,
    max_megapixels: float = 64.0,
    max_text_bytes: int = 8_000_000,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BuildReport:
    """Bring the index up to date with `paths` (folders or files); see the module doc."""
    started = time.perf_counter()
    if batch_size < 1 or loader_threads < 1:
        raise RetrvError(f"batch_size and loader_threads must be at least 1, got {batch_size} and {loader_threads}")
    if not max_megapixels > 0 or max_text_bytes < 1:
        raise RetrvError(
            f"max_megapixels and max_text_bytes must be positive, got {max_megapixels} and {max_text_bytes}"
        )
    report = BuildReport()
    roots = resolve_roots(paths)  # a missing path fails here, before anything is written

    entries: list[FileEntry] = []
    for found in scan(roots, excludes=excludes, include_hidden=include_hidden):
        if isinstance(found, Skip):
            report.skipped.append(found)
        elif found.kind not in encoder.modalities:
            reason = ENCODER_NO_IMAGES if found.kind == "image" else ENCODER_NO_TEXT
            report.skipped.append(Skip(found.path, reason, encoder.spec))
        else:
            entries.append(found)
            if len(entries) % 1000 == 0:
                emit(progress, "scan", len(entries))

    states = store.file_states()
    present: set[str] = set()
    changed: list[_Work] = []
    for entry in entries:
        state = states.get(entry.path)
        if state is not None and state.mtime == entry.mtime and state.size == entry.size:
            report.unchanged += 1
            present.add(entry.path)
        else:
            changed.append(_Work(entry, existed=state is not None))
    emit(progress, "scan", len(entries), len(entries), f"{len(entries)} files, {len(changed)} new or changed")

    with pil_limits(max_megapixels):
        pool = ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="retrv-loader")
        try:
            writer = _Writer(store, report, present, progress, should_stop)
            _hash_all(pool, changed, writer, max_text_bytes, chunk_chars_for(encoder))
            _write_all(pool, writer, encoder, batch_size, max_megapixels)
        except _Stopped:
            report.stopped = True
        finally:
            # Cancel what has not started; a running load finishes its one file. No hang on Ctrl-C.
            pool.shutdown(wait=True, cancel_futures=True)

    if not report.stopped:
        stale = [s.id for src, s in states.items() if src not in present and any(is_under(src, r) for r in roots)]
        if stale:
            store.delete(stale)
            report.removed = len(stale)
            emit(progress, "remove", len(stale), len(stale))
    report.seconds = time.perf_counter() - started
    return report


class _Writer:
    """Writes batches to the store, counts them, reports progress and honours should_stop."""

    def __init__(
        self,
        store: Store,
        report: BuildReport,
        present: set[str],
        progress: ProgressCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.store, self.report, self.present = store, report, present
        self.progress, self.should_stop = progress, should_stop
        self.reuse: list[_Work] = []  # vector taken from the store
        self.copies: dict[str, list[_Work]] = {}  # content hash -> later files sharing it in this build
        self.images: list[_Work] = []  # one per content hash, to encode
        self.texts: list[_Work] = []
        self.known: dict[str, np.ndarray] = {}
        self.total = 0
        self.done = 0

    def plan(self, works: list[_Work]) -> None:
        self.known = self.store.vectors_for_hashes(sorted({w.content_hash for w in works}))
        self.total = len(works)
        first: dict[str, _Work] = {}
        for w in works:
            if w.content_hash in self.known:
                self.reuse.append(w)
            elif w.content_hash in first:
                self.copies.setdefault(w.content_hash, []).append(w)
            else:
                first[w.content_hash] = w
                (self.images if w.entry.kind == "image" else self.texts).append(w)

    def skip(self, work: _Work, e: SkipFile) -> None:
        group = [work, *self.copies.get(work.content_hash, [])]
        self.report.skipped.extend(Skip(w.entry.path, e.reason, e.detail) for w in group)
        self.total -= len(group)  # so that the last "encode" event still reads done == total

    def write(self, works: list[_Work], vectors: np.ndarray, *, encoded: bool) -> None:
        import numpy as np

        rows: list[_Work] = []
        row_vectors: list[np.ndarray] = []
        for w, vector in zip(works, vectors):
            group = [w] if not encoded else [w, *self.copies.get(w.content_hash, [])]
            rows.extend(group)
            row_vectors.extend([vector] * len(group))
        items = [_item(w) for w in rows]
        self.store.upsert(items, np.stack(row_vectors).astype(np.float32, copy=False))
        encoded_now = len(works) if encoded else 0
        self.report.encoded += encoded_now
        self.report.reused += len(rows) - encoded_now
        for w in rows:
            if w.existed:
                self.report.updated += 1
            else:
                self.report.added += 1
            self.present.add(w.entry.path)
        self.done += len(rows)
        emit(self.progress, "encode", self.done, self.total)
        if self.should_stop is not None and self.should_stop():
            raise _Stopped


def _item(w: _Work) -> Item:
    e = w.entry
    if e.kind == "image":
        return Item(item_id(e.path), e.path, "image", None, e.path, e.mtime, e.size, w.content_hash)
    assert w.document is not None
    return Item(item_id(e.path), e.path, "text", w.document.preview, None, e.mtime, e.size, w.content_hash)


def _hash_all(
    pool: ThreadPoolExecutor, works: list[_Work], writer: _Writer, max_text_bytes: int, chunk_chars: int
) -> None:
    futures = [pool.submit(_read_and_hash, w.entry, max_text_bytes, chunk_chars) for w in works]
    usable: list[_Work] = []
    for i, (w, future) in enumerate(zip(works, futures), 1):
        try:
            w.content_hash, w.document = future.result()
            usable.append(w)
        except SkipFile as e:
            writer.report.skipped.append(Skip(w.entry.path, e.reason, e.detail))
        if i % 256 == 0 or i == len(works):
            emit(writer.progress, "hash", i, len(works))
            if writer.should_stop is not None and writer.should_stop():
                raise _Stopped
    writer.plan(usable)


def _read_and_hash(entry: FileEntry, max_text_bytes: int, chunk_chars: int) -> tuple[str, TextDocument | None]:
    digest = hashlib.blake2b(digest_size=16, person=entry.kind.encode())
    head = bytearray()  # the first max_text_bytes + 1 bytes of a text document
    total = 0
    try:
        with open(entry.path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
                total += len(block)
                if entry.kind == "text" and len(head) <= max_text_bytes:
                    head += block[: max_text_bytes + 1 - len(head)]
    except FileNotFoundError:
        raise SkipFile(VANISHED, "gone before it could be read") from None
    except PermissionError:
        raise SkipFile(PERMISSION_DENIED) from None
    except OSError as e:
        raise SkipFile(UNREADABLE, e.strerror or str(e)) from None
    if total == 0:
        raise SkipFile(EMPTY_FILE)
    document = None
    if entry.kind == "text":
        truncated = len(head) > max_text_bytes
        document = parse_document(bytes(head[:max_text_bytes]), truncated=truncated, chunk_chars=chunk_chars)
    return digest.hexdigest(), document


def _write_all(
    pool: ThreadPoolExecutor, writer: _Writer, encoder: Encoder, batch_size: int, max_megapixels: float
) -> None:
    for start in range(0, len(writer.reuse), REUSE_BATCH):
        works = writer.reuse[start : start + REUSE_BATCH]
        writer.write(works, [writer.known[w.content_hash] for w in works], encoded=False)

    group: list[_Work] = []
    chunks = 0
    for w in writer.texts:  # documents grouped so that one model call sees about batch_size chunks
        assert w.document is not None
        if group and chunks + len(w.document.chunks) > batch_size:
            writer.write(group, embed_documents(encoder, [g.document for g in group]), encoded=True)
            group, chunks = [], 0
        group.append(w)
        chunks += len(w.document.chunks)
    if group:
        writer.write(group, embed_documents(encoder, [g.document for g in group]), encoded=True)

    image_size = getattr(encoder, "image_size", None)
    draft = 2 * int(image_size) if image_size else None
    batch: list[_Work] = []
    pixels: list[Any] = []
    for w, outcome in _prefetched(pool, writer.images, 2 * batch_size, encoder, max_megapixels, draft):
        if isinstance(outcome, SkipFile):
            writer.skip(w, outcome)
            continue
        batch.append(w)
        pixels.append(outcome)
        if len(batch) == batch_size:
            writer.write(batch, encoder.encode_pixels(pixels), encoded=True)
            batch, pixels = [], []
    if batch:
        writer.write(batch, encoder.encode_pixels(pixels), encoded=True)


def _prefetched(
    pool: ThreadPoolExecutor, works: list[_Work], ahead: int, encoder: Encoder, max_megapixels: float, draft: int | None
) -> Iterator[tuple[_Work, Any]]:
    """Yield (work, preprocessed pixels or SkipFile) in order, keeping `ahead` loads in flight."""
    queue: deque = deque()
    todo = iter(works)

    def top_up() -> None:
        while len(queue) < ahead and (w := next(todo, None)) is not None:
            queue.append((w, pool.submit(_load_pixels, encoder, w.entry.path, max_megapixels, draft)))

    top_up()
    while queue:
        w, future = queue.popleft()
        top_up()
        try:
            yield w, future.result()
        except SkipFile as e:
            yield w, e


def _load_pixels(encoder: Encoder, path: str, max_megapixels: float, draft: int | None) -> Any:
    return encoder.preprocess(load_image(path, max_megapixels=max_megapixels, draft_size=draft))
