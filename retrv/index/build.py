"""The one index builder: files of folders and items of datasets in, one Lance version per written batch out.

Everything to index is first a `Source`: an id, what a person recognises it by, and where its content is (an
image file, a text document, inline text, or an image with text). `build_index` makes them from folders,
`add_items` from a dataset's candidates; `ingest` brings the store up to date with them:

1. A source whose stored row has the same (mtime, size) (and, for inline text, the same text) is unchanged and
   never opened.
2. Every new or changed source is read and hashed on the loader threads: its `content_hash` is blake2b-128 of
   its bytes (the file's for a file, the UTF-8 text's for inline text, both for an image with text),
   personalised with its kind so that an image and a text never share a vector. Documents are parsed in the
   same read, and an image's EXIF capture time is taken from the head of that read (the item's `date`, else
   its mtime).
3. A hash the store already holds (a renamed, copied or touched file) reuses the stored vector: no model call.
   Sources sharing a hash within this build are encoded once.
4. The rest goes through the model in batches, by an `EncodeStep`: `encode_locally` decodes images
   (`retrv.images`) and preprocesses them on loader threads, ahead of the model on the calling thread;
   `retrv.index.distributed` does the same on a Ray cluster. Texts are embedded as documents
   (`retrv.index.documents`: one vector per text); an image with text gets `encoders.base.combine` of the two
   (`embed_batch`, the same on both). Each batch that comes back is one `store.upsert` here, so an interrupted
   build leaves every finished batch readable and the next build picks up where it stopped.
5. Stored rows in the build's scope whose source is gone (or can no longer be read) are deleted: for folders,
   rows under the given roots; for a dataset, every row not among its items. A stopped build deletes nothing,
   and a folder build that would remove more than half of the index, or every row under one of its roots,
   removes nothing unless `prune` is set (`guard_removal`: that looks like an unmounted drive, not deleted
   photos); it reports what it held back.

Bad input never stops a build: each source that cannot be used becomes a `Skip` with a reason.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retrv.errors import UsageError
from retrv.images import EXIF_HEAD_BYTES, capture_date, load_image, pil_limits
from retrv.index.documents import TextDocument, chunk_chars_for, embed_documents, parse_document
from retrv.items import Item, file_item_id, modality_of
from retrv.progress import ProgressCallback, emit
from retrv.scan import (
    EMPTY_FILE,
    ENCODER_NO_IMAGES,
    ENCODER_NO_TEXT,
    NOT_REGULAR,
    PERMISSION_DENIED,
    UNREADABLE,
    VANISHED,
    Skip,
    SkipFile,
    is_under,
    resolve_roots,
    scan,
)

if TYPE_CHECKING:
    import numpy as np

    from retrv.encoders.base import Encoder
    from retrv.index.store import FileState, Store

HASH_BLOCK = 1 << 20
REUSE_BATCH = 1024  # rows per upsert when no model runs


@dataclass(frozen=True)
class Source:
    """One thing to index, before its content is read: an image file, a text document, or a dataset item
    with inline `text` and/or an `image_path`. `mtime` and `size` are the file's (the image's for an item;
    0 and the text's byte length for a text-only item)."""

    id: str
    source: str
    image_path: str | None = None
    document_path: str | None = None
    text: str | None = None
    mtime: float = 0.0
    size: int = 0

    @property
    def needs(self) -> frozenset[str]:
        """The encoder modalities this source needs."""
        has_text = self.document_path is not None or self.text is not None
        return frozenset({"image"} if self.image_path else set()) | frozenset({"text"} if has_text else set())


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
    held_back: list[tuple[str, str]] = field(default_factory=list)  # (source, id) gone from disk, kept (see prune)
    held_back_why: str | None = None

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
            "held_back": len(self.held_back),
            "held_back_why": self.held_back_why,
        }


@dataclass(frozen=True)
class EncodeJob:
    """What the model needs of one source to encode: its image file and/or its parsed text."""

    image_path: str | None
    document: TextDocument | None


@dataclass(frozen=True)
class Encoded:
    """What an EncodeStep yields for a batch: positions in its job list and their vectors (one row each)."""

    positions: list[int]
    vectors: np.ndarray


@dataclass(frozen=True)
class Failed:
    """What an EncodeStep yields for a job it could not use, and why."""

    position: int
    why: SkipFile


EncodeStep = Callable[[list[EncodeJob], "Encoder", "BuildOptions"], Iterator[Encoded | Failed]]


@dataclass
class BuildOptions:
    batch_size: int = 32
    loader_threads: int = 2
    max_megapixels: float = 64.0
    max_text_bytes: int = 8_000_000
    prune: bool = False  # remove what is gone from disk even when `guard_removal` would hold it back
    encode: EncodeStep | None = None  # how the new content is encoded (None: `encode_locally`)

    def validate(self) -> None:
        if self.batch_size < 1 or self.loader_threads < 1:
            raise UsageError(
                f"batch_size and loader_threads must be at least 1, got {self.batch_size} and {self.loader_threads}"
            )
        if not self.max_megapixels > 0 or self.max_text_bytes < 1:
            raise UsageError(
                f"max_megapixels and max_text_bytes must be positive, got {self.max_megapixels} "
                f"and {self.max_text_bytes}"
            )


def folder_sources(
    paths: Iterable[str | os.PathLike[str]], *, excludes: Iterable[str] = (), include_hidden: bool = False
) -> tuple[list[str], list[Source], list[Skip]]:
    """(resolved roots, a Source per image and document under them, what the scan had to skip)."""
    roots = resolve_roots(paths)  # a missing path fails here, before anything is written
    sources: list[Source] = []
    skips: list[Skip] = []
    for found in scan(roots, excludes=excludes, include_hidden=include_hidden):
        if isinstance(found, Skip):
            skips.append(found)
        elif found.kind == "image":
            sources.append(
                Source(file_item_id(found.path), found.path, image_path=found.path, mtime=found.mtime, size=found.size)
            )
        else:
            sources.append(
                Source(
                    file_item_id(found.path), found.path, document_path=found.path, mtime=found.mtime, size=found.size
                )
            )
    return roots, sources, skips


def item_sources(items: Iterable[Item]) -> list[Source]:
    """Dataset items (inline text and/or an image path) as Sources; an image that is gone is skipped later."""
    sources = []
    for item in items:
        text = item.text or None
        mtime, size = 0.0, len(text.encode("utf-8", "surrogateescape")) if text else 0
        if item.image_path:
            try:
                st = os.stat(item.image_path)
                mtime, size = st.st_mtime, size + st.st_size
            except OSError:
                pass  # reading it says why
        sources.append(Source(item.id, item.source, image_path=item.image_path, text=text, mtime=mtime, size=size))
    return sources


def build_index(
    store: Store,
    encoder: Encoder,
    paths: Iterable[str | os.PathLike[str]],
    *,
    excludes: Iterable[str] = (),
    include_hidden: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> BuildReport:
    """Bring the index up to date with `paths` (folders or files); see the module doc."""
    roots, sources, skips = folder_sources(paths, excludes=excludes, include_hidden=include_hidden)
    return ingest_files(store, encoder, roots, sources, skips, progress=progress, should_stop=should_stop, **options)


def ingest_files(
    store: Store,
    encoder: Encoder,
    roots: list[str],
    sources: list[Source],
    skips: list[Skip],
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> BuildReport:
    """`ingest` the scanned `sources` of `roots`: stored rows under the roots that were not found are removed,
    within the limits of `guard_removal` unless `prune`."""
    return ingest(
        store,
        encoder,
        sources,
        roots=roots,
        options=BuildOptions(**options),
        report=BuildReport(skipped=list(skips)),
        progress=progress,
        should_stop=should_stop,
    )


def add_items(
    store: Store,
    encoder: Encoder,
    items: Iterable[Item],
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> BuildReport:
    """Bring the index up to date with a dataset's `items` (ids unique); rows of other ids are removed."""
    return ingest_items(store, encoder, item_sources(items), progress=progress, should_stop=should_stop, **options)


def ingest_items(
    store: Store,
    encoder: Encoder,
    sources: list[Source],
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> BuildReport:
    """`ingest` a dataset's item `sources`: every stored row not among them is removed."""
    return ingest(
        store,
        encoder,
        sources,
        roots=None,
        options=BuildOptions(**options, prune=True),
        progress=progress,
        should_stop=should_stop,
    )


@dataclass
class _Work:
    source: Source
    existed: bool  # the store had a row for this source
    content_hash: str = ""
    document: TextDocument | None = None
    taken: float | None = None  # the EXIF capture time of an image that records one


class _Stopped(Exception):
    pass


def ingest(
    store: Store,
    encoder: Encoder,
    sources: list[Source],
    *,
    roots: list[str] | None,
    options: BuildOptions | None = None,
    report: BuildReport | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BuildReport:
    """Bring `store` up to date with `sources`. Stored rows not among them go when they are in scope: under
    `roots`, or every row when `roots` is None (a dataset); `guard_removal` may hold them back."""
    started = time.perf_counter()
    options = options or BuildOptions()
    options.validate()
    report = report or BuildReport()
    usable: list[Source] = []
    for src in sources:
        missing = src.needs - encoder.modalities
        if missing:
            reason = ENCODER_NO_IMAGES if "image" in missing else ENCODER_NO_TEXT
            report.skipped.append(Skip(src.source, reason, encoder.spec))
        else:
            usable.append(src)

    states = store.file_states()
    present: set[str] = set()
    changed: list[_Work] = []
    same_file = [s for s in usable if _same_stamp(states.get(s.source), s)]
    stored_texts = store.texts([s.id for s in same_file if s.text is not None])
    for src in usable:
        state = states.get(src.source)
        if _same_stamp(state, src) and (src.text is None or stored_texts.get(src.id) == src.text):
            report.unchanged += 1
            present.add(src.source)
        else:
            changed.append(_Work(src, existed=state is not None))
    emit(progress, "scan", len(usable), len(usable), f"{len(usable)} items, {len(changed)} new or changed")

    pool = ThreadPoolExecutor(max_workers=options.loader_threads, thread_name_prefix="retrv-hash")
    try:
        writer = _Writer(store, report, present, progress, should_stop)
        with pil_limits(options.max_megapixels):  # hashing reads each image's header for its EXIF date
            _hash_all(pool, changed, writer, options.max_text_bytes, chunk_chars_for(encoder))
            pool.shutdown(wait=True)
        _write_all(writer, encoder, options)
    except _Stopped:
        report.stopped = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # cancel what has not started: no hang on Ctrl-C

    if not report.stopped:
        in_scope = (lambda src: any(is_under(src, r) for r in roots)) if roots is not None else (lambda _: True)
        stale = {src: s.id for src, s in states.items() if src not in present and in_scope(src)}
        found = {s.source for s in sources}
        why = None if options.prune or roots is None else guard_removal(stale, states, roots, found)
        if why is not None:
            report.held_back, report.held_back_why = sorted(stale.items()), why
        elif stale:
            store.delete(list(stale.values()))
            report.removed = len(stale)
            emit(progress, "remove", len(stale), len(stale))
    report.seconds = time.perf_counter() - started
    return report


PRUNE_GUARD_SHARE = 0.5


def guard_removal(stale: dict[str, str], states: dict[str, FileState], roots: list[str], found: set[str]) -> str | None:
    """Why a build should not remove the `stale` rows (source -> id) without `--prune`, or None when it may.

    Removing more than `PRUNE_GUARD_SHARE` of the index's items in one build, or every item under a root in
    which the scan `found` nothing at all, looks like a drive that is not mounted or a folder that was moved,
    not like deleted photos."""
    if not stale:
        return None
    if len(stale) > PRUNE_GUARD_SHARE * len(states):
        return f"{len(stale)} of the index's {len(states)} items are gone from disk"
    for root in roots:
        under = [src for src in states if is_under(src, root)]
        if under and all(src in stale for src in under) and not any(is_under(src, root) for src in found):
            return f"every one of the {len(under)} items under {root} is gone from disk, and the folder is empty"
    return None


def _same_stamp(state: FileState | None, src: Source) -> bool:
    return state is not None and state.id == src.id and state.mtime == src.mtime and state.size == src.size


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
        self.copies: dict[str, list[_Work]] = {}  # content hash -> later sources sharing it in this build
        self.encode: list[_Work] = []  # one per content hash, to run through the model
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
                self.encode.append(w)

    def skip(self, work: _Work, e: SkipFile) -> None:
        group = [work, *self.copies.get(work.content_hash, [])]
        self.report.skipped.extend(Skip(w.source.source, e.reason, e.detail) for w in group)
        self.total -= len(group)  # so that the last "encode" event still reads done == total

    def write(self, works: list[_Work], vectors: np.ndarray, *, encoded: bool) -> None:
        import numpy as np

        rows: list[_Work] = []
        row_vectors: list[np.ndarray] = []
        for w, vector in zip(works, vectors, strict=True):
            group = [w] if not encoded else [w, *self.copies.get(w.content_hash, [])]
            rows.extend(group)
            row_vectors.extend([vector] * len(group))
        if rows:
            self.store.upsert([_item(w) for w in rows], np.stack(row_vectors).astype(np.float32, copy=False))
        encoded_now = len(works) if encoded else 0
        self.report.encoded += encoded_now
        self.report.reused += len(rows) - encoded_now
        for w in rows:
            if w.existed:
                self.report.updated += 1
            else:
                self.report.added += 1
            self.present.add(w.source.source)
        self.done += len(rows)
        emit(self.progress, "encode", self.done, self.total)
        if self.should_stop is not None and self.should_stop():
            raise _Stopped


def _item(w: _Work) -> Item:
    s = w.source
    text = s.text if s.text is not None else (w.document.preview if w.document is not None else None)
    modality = modality_of(text is not None, s.image_path is not None)
    date = w.taken if w.taken is not None else s.mtime
    return Item(s.id, s.source, modality, text, s.image_path, s.mtime, s.size, w.content_hash, date)


def _hash_all(
    pool: ThreadPoolExecutor, works: list[_Work], writer: _Writer, max_text_bytes: int, chunk_chars: int
) -> None:
    futures = [pool.submit(_read_and_hash, w.source, max_text_bytes, chunk_chars) for w in works]
    usable: list[_Work] = []
    for i, (w, future) in enumerate(zip(works, futures, strict=True), 1):
        try:
            w.content_hash, w.document, w.taken = future.result()
            usable.append(w)
        except SkipFile as e:
            writer.report.skipped.append(Skip(w.source.source, e.reason, e.detail))
        if i % 256 == 0 or i == len(works):
            emit(writer.progress, "hash", i, len(works))
            if writer.should_stop is not None and writer.should_stop():
                raise _Stopped
    writer.plan(usable)


def _read_and_hash(src: Source, max_text_bytes: int, chunk_chars: int) -> tuple[str, TextDocument | None, float | None]:
    """(content hash, the parsed text, the image's EXIF capture time) of a source; SkipFile with the reason when
    it cannot be used."""
    if src.document_path is not None:
        digest = hashlib.blake2b(digest_size=16, person=b"text")
        head = _read_file(src.document_path, digest, keep=max_text_bytes + 1)
        truncated = len(head) > max_text_bytes
        parsed = parse_document(head[:max_text_bytes], truncated=truncated, chunk_chars=chunk_chars)
        return digest.hexdigest(), parsed, None
    text = src.text.encode("utf-8", "surrogateescape") if src.text is not None else None
    kind = b"image,text" if src.image_path and text is not None else b"image" if src.image_path else b"text"
    digest = hashlib.blake2b(digest_size=16, person=kind)
    taken = capture_date(_read_file(src.image_path, digest, keep=EXIF_HEAD_BYTES)) if src.image_path else None
    document: TextDocument | None = None
    if text is not None:
        digest.update(text)
        document = parse_document(text, chunk_chars=chunk_chars)
    return digest.hexdigest(), document, taken


def _read_file(path: str, digest: Any, keep: int = 0) -> bytes:
    """Feed the file's bytes to `digest`; return its first `keep` bytes. SkipFile when it cannot be read."""
    head = bytearray()
    total = 0
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the build, a device never end
            raise SkipFile(NOT_REGULAR)
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
                total += len(block)
                if len(head) < keep:
                    head += block[: keep - len(head)]
    except FileNotFoundError:
        raise SkipFile(VANISHED, "gone before it could be read") from None
    except PermissionError:
        raise SkipFile(PERMISSION_DENIED) from None
    except OSError as e:
        raise SkipFile(UNREADABLE, e.strerror or str(e)) from None
    if total == 0:
        raise SkipFile(EMPTY_FILE)
    return bytes(head)


def _write_all(writer: _Writer, encoder: Encoder, options: BuildOptions) -> None:
    import numpy as np

    for start in range(0, len(writer.reuse), REUSE_BATCH):
        works = writer.reuse[start : start + REUSE_BATCH]
        writer.write(works, np.stack([writer.known[w.content_hash] for w in works]), encoded=False)

    jobs = [EncodeJob(w.source.image_path, w.document) for w in writer.encode]
    results = (options.encode or encode_locally)(jobs, encoder, options)
    try:
        for result in results:
            if isinstance(result, Failed):
                writer.skip(writer.encode[result.position], result.why)
            else:
                writer.write([writer.encode[i] for i in result.positions], result.vectors, encoded=True)
    finally:
        getattr(results, "close", lambda: None)()  # a stopped build stops the step's loaders (or its cluster work)


def encode_locally(jobs: list[EncodeJob], encoder: Encoder, options: BuildOptions) -> Iterator[Encoded | Failed]:
    """The EncodeStep of one process: images decoded and preprocessed on `loader_threads`, at most two batches
    ahead of the model, which runs on the calling thread; batches of about `batch_size` images and text chunks."""
    image_size = getattr(encoder, "image_size", None)
    draft = 2 * int(image_size) if image_size else None
    with pil_limits(options.max_megapixels):
        pool = ThreadPoolExecutor(max_workers=options.loader_threads, thread_name_prefix="retrv-loader")
        try:
            batch: list[tuple[int, Any]] = []
            cost = 0  # images and text chunks in the batch: one model call sees about batch_size of them
            for i, pixels in _prefetched(pool, jobs, 2 * options.batch_size, encoder, options.max_megapixels, draft):
                if isinstance(pixels, SkipFile):
                    yield Failed(i, pixels)
                    continue
                document = jobs[i].document
                size = (pixels is not None) + (len(document.chunks) if document is not None else 0)
                if batch and cost + size > options.batch_size:
                    yield _encoded(encoder, jobs, batch)
                    batch, cost = [], 0
                batch.append((i, pixels))
                cost += size
            if batch:
                yield _encoded(encoder, jobs, batch)
        finally:
            # Cancel what has not started; a running load finishes its one file. No hang on Ctrl-C.
            pool.shutdown(wait=True, cancel_futures=True)


def _encoded(encoder: Encoder, jobs: list[EncodeJob], batch: list[tuple[int, Any]]) -> Encoded:
    positions = [i for i, _ in batch]
    return Encoded(positions, embed_batch(encoder, [p for _, p in batch], [jobs[i].document for i in positions]))


def embed_batch(encoder: Encoder, pixels: list[Any], documents: list[TextDocument | None]) -> np.ndarray:
    """One vector per item: its image's (preprocessed `pixels`, None without an image), its document's, or
    `combine` of both; one model call per modality."""
    import numpy as np

    from retrv.encoders.base import combine

    out = np.zeros((len(pixels), encoder.dim), dtype=np.float32)
    with_image = [i for i, p in enumerate(pixels) if p is not None]
    texts = [(i, d) for i, d in enumerate(documents) if d is not None]
    with_text = [i for i, _ in texts]
    if with_image:
        out[with_image] = encoder.encode_pixels([pixels[i] for i in with_image])
    if texts:
        text_vectors = embed_documents(encoder, [d for _, d in texts])
        for i, vector in zip(with_text, text_vectors, strict=True):
            out[i] = combine(out[i], vector) if pixels[i] is not None else vector
    return out


def _prefetched(
    pool: ThreadPoolExecutor,
    jobs: list[EncodeJob],
    ahead: int,
    encoder: Encoder,
    max_megapixels: float,
    draft: int | None,
) -> Iterator[tuple[int, Any]]:
    """Yield (position, preprocessed pixels, None without an image, or SkipFile) in order, `ahead` in flight."""
    queue: deque = deque()
    todo = iter(enumerate(jobs))

    def top_up() -> None:
        while len(queue) < ahead and (job := next(todo, None)) is not None:
            i, path = job[0], job[1].image_path
            queue.append((i, pool.submit(_load_pixels, encoder, path, max_megapixels, draft) if path else None))

    top_up()
    while queue:
        i, future = queue.popleft()
        top_up()
        try:
            yield i, future.result() if future is not None else None
        except SkipFile as e:
            yield i, e


def _load_pixels(encoder: Encoder, path: str, max_megapixels: float, draft: int | None) -> Any:
    return encoder.preprocess(load_image(path, max_megapixels=max_megapixels, draft_size=draft))
