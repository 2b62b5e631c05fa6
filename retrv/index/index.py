"""`Index`: the front door to one on-disk index (store + ANN + the encoder it was built with)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.config import resolve_index_path
from retrv.errors import EncoderMismatchError, IndexNotFoundError, RetrvError, UsageError
from retrv.items import Hit, Item, Query

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from retrv.config import Settings
    from retrv.encoders.base import Encoder
    from retrv.index.ann import AnnIndex, ShardAdd
    from retrv.index.build import BuildReport, Source
    from retrv.index.filters import SearchFilter
    from retrv.index.store import Store
    from retrv.progress import ProgressCallback


@dataclass
class CompactReport:
    index: str
    bytes_before: int
    bytes_after: int
    version_before: int
    version_after: int

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after


def _exact_top_k(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], vector: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keys and scores of the `k` best of `batches` (keys, vectors) by inner product with `vector`, best first;
    memory for one batch and k, whatever the number of rows."""
    import numpy as np

    best_keys, best_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for keys, vectors in batches:
        keys = np.concatenate([best_keys, keys])
        scores = np.concatenate([best_scores, vectors @ vector])
        top = np.argsort(-scores, kind="stable")[:k]
        best_keys, best_scores = keys[top], scores[top]
    return best_keys, best_scores


class Index:
    """An index on disk. Open it, add folders (or a dataset's items) to it, search it.

    >>> index = Index.open("./photos-index", create=True)
    >>> index.add(["./photos"])
    >>> index.search("a red car next to a bridge", k=5)

    `Index.open(..., create=True)` on a path that holds no index loads the encoder but writes nothing: the
    index is created by the first `add` that has something the encoder can embed.
    """

    def __init__(
        self,
        store: Store | None,
        *,
        root: Path | str | None = None,
        device: str = "auto",
        exact_max: int = 50_000,
        ann_memory: int | None = None,
        storage_options: dict[str, str] | None = None,
        encoder: Encoder | None = None,
        notify: Callable[[str], None] | None = None,
        ann_shards: ShardAdd | None = None,
    ) -> None:
        if store is None and (root is None or encoder is None):
            raise ValueError("an index not created yet needs its root and its encoder")
        self._store = store
        self.root: Path | str = store.root if store is not None else root  # type: ignore[assignment]  # checked above
        self.device = device
        self.exact_max = exact_max
        self.ann_memory = ann_memory
        self.ann_shards = ann_shards  # who fills the shards of an on-disk IVF-PQ (None: this process)
        self.storage_options = dict(storage_options or (store.storage_options if store is not None else {}))
        self.notify = notify
        self._encoder = encoder
        self._ann: AnnIndex | None = None
        self._ann_identity: str | None = None

    @classmethod
    def open(
        cls,
        index: str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        encoder: str | Encoder = "auto",
        device: str = "auto",
        exact_max: int = 50_000,
        ann_memory: int | None = None,
        storage_options: dict[str, str] | None = None,
        notify: Callable[[str], None] | None = None,
        ann_shards: ShardAdd | None = None,
    ) -> Index:
        """Open the index at `index` (a name under the user data dir, a directory, or an object-store URI such as
        `s3://bucket/prefix`, reached with `storage_options`).

        `encoder` (a spec string, or a loaded encoder) other than "auto" must match the one the index was built
        with; with `create`, a missing index will be created with that encoder ("auto" resolves to CLIP, else
        `lite`). `ann_memory` (bytes) is the budget the ANN kind is chosen for (`retrv.index.ann_plan`); an on-disk
        IVF-PQ's shards are filled by `ann_shards` when given (`retrv.index.distributed.ray_shard_add`).
        """
        from retrv.encoders.registry import canonical_spec, load_encoder
        from retrv.index.store import Store

        root = resolve_index_path(index)
        loaded = None if isinstance(encoder, str) else encoder
        spec = encoder if isinstance(encoder, str) else encoder.spec
        if Store.exists(root, storage_options):
            store = Store.open(root, storage_options)
            if spec not in (None, "", "auto") and canonical_spec(spec) != store.meta.encoder:
                raise EncoderMismatchError(
                    f"index {root} was built with encoder {store.meta.encoder!r}, not {canonical_spec(spec)!r}; "
                    "drop --encoder to use the index's own, or build a new index with --index OTHER"
                )
            return cls(
                store,
                device=device,
                exact_max=exact_max,
                ann_memory=ann_memory,
                encoder=loaded,
                notify=notify,
                ann_shards=ann_shards,
            )
        if not create:
            from retrv.index.catalog import known_names_hint

            raise IndexNotFoundError(
                f"no index at {root}; build one with: retrv build-index FOLDER --index {index or root}"
                + known_names_hint()
            )
        loaded = loaded or load_encoder(spec or "auto", device=device, notify=notify)
        return cls(
            None,
            root=root,
            device=device,
            exact_max=exact_max,
            ann_memory=ann_memory,
            storage_options=storage_options,
            encoder=loaded,
            notify=notify,
            ann_shards=ann_shards,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        create: bool = False,
        encoder: str | Encoder = "auto",
        notify: Callable[[str], None] | None = None,
        ann_shards: ShardAdd | None = None,
    ) -> Index:
        """`Index.open` with what `settings` say: the index, the device, the exact and memory limits of the ANN, the
        object-store options (`encoder` and `ann_shards` as in `open`)."""
        return cls.open(
            settings.index,
            create=create,
            encoder=encoder,
            device=settings.device,
            exact_max=settings.exact_search_max,
            ann_memory=settings.ann_memory_bytes,
            storage_options=settings.storage,
            notify=notify,
            ann_shards=ann_shards,
        )

    @property
    def created(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise IndexNotFoundError(f"no index at {self.root} yet; add files to it with: retrv build-index FOLDER")
        return self._store

    @property
    def encoder_spec(self) -> str:
        return self._store.meta.encoder if self._store is not None else self.encoder.spec

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from retrv.encoders.registry import load_encoder

            self._encoder = load_encoder(self.store.meta.encoder, device=self.device, notify=self.notify)
            if self._encoder.dim != self.store.meta.dim:
                raise EncoderMismatchError(
                    f"encoder {self.store.meta.encoder!r} now gives {self._encoder.dim}-d vectors, "
                    f"but index {self.root} holds {self.store.meta.dim}-d vectors; rebuild the index"
                )
        return self._encoder

    def _refuse_unembeddable(self, sources: list[Source]) -> None:
        """A new index is not created (and locked to its encoder) when the encoder can embed none of `sources`."""
        from retrv.index.store import Store
        from retrv.scan import ENCODER_NO_IMAGES, ENCODER_NO_TEXT

        if self._store is not None or Store.exists(self.root, self.storage_options):
            return
        usable = [s for s in sources if not (s.needs - self.encoder.modalities)]
        refused = len(sources) - len(usable)
        if not usable and refused:
            kind = ENCODER_NO_IMAGES if any("image" in s.needs for s in sources) else ENCODER_NO_TEXT
            raise UsageError(
                f"{kind} ({self.encoder.spec}), and none of the {refused} file(s) given is something it can; "
                f"no index was created at {self.root}. Choose an encoder for them, e.g. --encoder clip or --encoder lite"
            )

    @contextmanager
    def _writing(self, sources: list[Source]) -> Iterator[Store]:
        """Hold the index's write lock for a write; create the index first if it is new. Another process may
        have created it while this one waited: then this write joins it (same encoder) or fails clearly."""
        from retrv.index.lock import write_lock
        from retrv.index.store import Store

        self._refuse_unembeddable(sources)
        with write_lock(self.root, notify=self.notify):
            if self._store is None:
                if Store.exists(self.root, self.storage_options):
                    store = Store.open(self.root, self.storage_options)
                    if store.meta.encoder != self.encoder.spec:
                        raise EncoderMismatchError(
                            f"index {self.root} was created meanwhile by another build, with encoder "
                            f"{store.meta.encoder!r}, not {self.encoder.spec!r}; run again to add to it with its "
                            "encoder, or choose another --index"
                        )
                    self._store = store
                else:
                    self._store = Store.create(
                        self.root,
                        encoder_spec=self.encoder.spec,
                        dim=self.encoder.dim,
                        storage_options=self.storage_options,
                    )
            yield self._store

    def add(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        excludes: Iterable[str] = (),
        include_hidden: bool = False,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        **options: Any,
    ) -> BuildReport:
        """Index files and folders incrementally (`retrv.index.build`); `options` are `BuildOptions` fields."""
        from retrv.index.build import folder_sources, ingest_files

        roots, sources, skips = folder_sources(paths, excludes=excludes, include_hidden=include_hidden)
        with self._writing(sources) as store:
            report = ingest_files(
                store, self.encoder, roots, sources, skips, progress=progress, should_stop=should_stop, **options
            )
            return self._after_write(report, progress)

    def add_items(
        self,
        items: Iterable[Item],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        **options: Any,
    ) -> BuildReport:
        """Make the index hold exactly `items` (a dataset's candidates; ids unique), incrementally."""
        from retrv.index.build import ingest_items, item_sources

        sources = item_sources(items)
        with self._writing(sources) as store:
            report = ingest_items(store, self.encoder, sources, progress=progress, should_stop=should_stop, **options)
            return self._after_write(report, progress)

    def forget(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Drop the items under `paths` (files or folders, present or gone) from the index, not touching the
        files; a later `add` of those folders adds them again. Returns how many were dropped."""
        from retrv.scan import is_under

        roots = [os.path.realpath(os.path.abspath(os.fspath(p))) for p in paths]
        states = self.store.file_states()
        ids = [s.id for source, s in states.items() if any(is_under(source, r) for r in roots)]
        if not ids:
            raise UsageError(f"no item of index {self.root} is under {', '.join(roots)}")
        return self.remove(ids)

    def compact(self) -> CompactReport:
        """Merge small data files and delete the versions before the latest (Lance compaction and cleanup);
        refused while another process writes the index. Rows and vectors are unchanged."""
        from datetime import timedelta

        from retrv.index.lock import write_lock

        before = self.store.size_on_disk()
        versions = self.store.version()
        with write_lock(self.root, wait=False):
            self.store.compact(timedelta(0))
        self._ann = None
        return CompactReport(str(self.root), before, self.store.size_on_disk(), versions, self.store.version())

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        """Every item as an Arrow table: id, key, source, modality, text, image_path, mtime, size, content_hash,
        written, vector (or the `columns` asked for). For large indexes `export.stream_batches` streams."""
        return self.store.scan_all(columns)

    def remove(self, ids: list[str]) -> int:
        """Remove items by id (their files are not touched); returns how many there were."""
        with self._writing([]) as store:
            before = store.count()
            store.delete(ids)
            self._ann = None
            return before - store.count()

    def _after_write(self, report: BuildReport, progress: ProgressCallback | None) -> BuildReport:
        self._ann = None
        if not report.stopped and self.store.count():
            self.ann(progress)  # pay for the faiss index (HNSW above exact_max) now, not at the first search
        return report

    def ann(self, progress: ProgressCallback | None = None) -> AnnIndex:
        """The faiss index for the store's current version (loaded from cache, updated or built)."""
        from retrv.index.ann import AnnIndex

        with self.store.version_lock:  # another thread's refresh must not move the table under the build
            self.store.refresh()
            identity = self.store.identity() or f"v{self.store.version()}"
            if self._ann is None or self._ann_identity != identity:
                self._ann = AnnIndex.load_or_build(
                    self.store,
                    exact_max=self.exact_max,
                    progress=progress,
                    budget=self.ann_memory,
                    add_shards=self.ann_shards,
                )
                self._ann_identity = identity
                shortfall = self._ann.plan.shortfall() if self._ann.plan is not None else None
                if shortfall and self._ann.source != "cache" and self.notify is not None:
                    self.notify(shortfall)  # once, when built or updated
            return self._ann

    def embed_query(self, query: Query | str) -> np.ndarray:
        """One L2-normalised vector for a (possibly composed) query."""
        import numpy as np

        from retrv.encoders.base import combine
        from retrv.images import load_query_image

        query = Query(text=query) if isinstance(query, str) else query

        def one(q: Query) -> np.ndarray:
            parts = []
            text = f"{q.instruction} {q.text}" if q.instruction and q.text else q.text
            if text:
                parts.append(self.encoder.encode_texts([text])[0])
            if q.image is not None:
                parts.append(self.encoder.encode_images([load_query_image(q.image)])[0])
            return parts[0] if len(parts) == 1 else combine(parts[1][None], parts[0][None])[0]

        vector = one(query)
        for q in query.add:
            vector = vector + one(q)
        for q in query.subtract:
            vector = vector - one(q)
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).astype(np.float32)

    def coarse(self, query: Query | str, k: int, where: SearchFilter | None = None) -> tuple[list[Item], list[float]]:
        """The top-`k` stored items (those `where` accepts) and their cosine scores, best first."""
        return self.nearest(self.embed_query(query), k, where)

    def nearest(self, vector: np.ndarray, k: int, where: SearchFilter | None = None) -> tuple[list[Item], list[float]]:
        """The top-`k` stored items (those `where` accepts) by inner product with `vector`, best first.

        Unfiltered, the ANN answers. Filtered, LanceDB first finds the keys that pass (a scan of its scalar
        columns); up to `exact_max` of them are scored exactly, and above that the ANN searches only those keys,
        falling back to the exact scan when it finds fewer than `k` (HNSW and IVF can, when few keys pass)."""
        self.store.refresh()
        if self.store.count() == 0:
            raise RetrvError(
                f"index {self.root} is empty; add files with: retrv build-index FOLDER --index {self.root}"
            )
        if where is None:
            k = min(k, self.store.count())  # a k far above the index size must not allocate for k
            scores, keys = self.ann().search(vector[None], k)
            return self._items_for(keys[0], scores[0])
        predicate = where.where(date_column=self.store.date_column)
        allowed = self.store.keys(predicate)  # LanceDB evaluates the filter on its scalar columns
        k = min(k, len(allowed))
        if k == 0:
            return [], []
        if len(allowed) > self.exact_max:
            scores, keys = self.ann().search(vector[None], k, allowed=allowed)
            if (keys[0] != -1).sum() == k:
                return self._items_for(keys[0], scores[0])
        return self._items_for(*_exact_top_k(self.store.iter_vectors(predicate), vector, k))

    def check_filter(self, where: SearchFilter) -> None:
        """UsageError for an `under` folder that holds no item of this index (a typo, or a folder never
        indexed): an empty result would not say why."""
        from retrv.index.filters import under_sql

        for root in where.under:
            if not self.store.count(under_sql(root)):
                raise UsageError(f"--under {root}: index {self.root} holds no item at or below it")

    def _items_for(self, keys: np.ndarray, scores: np.ndarray) -> tuple[list[Item], list[float]]:
        pairs = [(int(key), float(s)) for key, s in zip(keys, scores, strict=True) if key != -1]
        items = self.store.items_for_keys([key for key, _ in pairs])
        found = [(item, s) for item, (_, s) in zip(items, pairs, strict=True) if item is not None]
        return [item for item, _ in found], [s for _, s in found]

    def search(self, query: Query | str, k: int = 10, where: SearchFilter | None = None) -> list[Hit]:
        """Coarse search only (no reranking, no de-duplication); `retrv.Engine` adds both."""
        items, scores = self.coarse(query, k, where)
        return [Hit.from_item(item, score, rank=rank) for rank, (item, score) in enumerate(zip(items, scores), 1)]

    def info(self) -> dict[str, Any]:
        from retrv.index.ann import AnnIndex

        meta = self.store.meta
        return {
            "path": str(self.root),
            "encoder": meta.encoder,
            "dim": meta.dim,
            "schema_version": meta.schema_version,
            "retrv_version": meta.retrv_version,
            "items": self.store.count(),
            "by_modality": self.store.counts_by_modality(),
            "size_bytes": self.store.size_on_disk(),
            "table_version": self.store.version(),
            "side_tables": self.store.side_tables(),
            "ann": AnnIndex.describe_cache(self.store),
        }
