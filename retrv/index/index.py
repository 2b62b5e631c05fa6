"""`Index`: the front door to one on-disk index (store + ANN + the encoder it was built with)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.config import resolve_index_path
from retrv.errors import EncoderMismatchError, IndexNotFoundError, RetrvError
from retrv.items import Hit, Item, Query

if TYPE_CHECKING:
    import numpy as np

    from retrv.encoders.base import Encoder
    from retrv.index.ann import AnnIndex
    from retrv.index.build import BuildReport
    from retrv.index.store import Store
    from retrv.progress import ProgressCallback


class Index:
    """An index on disk. Open it, add folders to it, search it.

    >>> index = Index.open("./photos-index", create=True)
    >>> index.add(["./photos"])
    >>> index.search("a red car next to a bridge", k=5)
    """

    def __init__(
        self,
        store: Store,
        *,
        device: str = "auto",
        exact_max: int = 50_000,
        encoder: Encoder | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.device = device
        self.exact_max = exact_max
        self.notify = notify
        self._encoder = encoder
        self._ann: AnnIndex | None = None
        self._ann_version: int | None = None

    @classmethod
    def open(
        cls,
        index: str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        encoder: str = "auto",
        device: str = "auto",
        exact_max: int = 50_000,
        notify: Callable[[str], None] | None = None,
    ) -> Index:
        """Open the index at `index` (a name under the user data dir, or a directory).

        `encoder` other than "auto" must match the one the index was built with; with `create`,
        a missing index is created with that encoder ("auto" resolves to CLIP, else `lite`).
        """
        from retrv.encoders.registry import canonical_spec, load_encoder
        from retrv.index.store import Store

        root = resolve_index_path(index)
        if Store.exists(root):
            store = Store.open(root)
            if encoder not in (None, "", "auto") and canonical_spec(encoder) != store.meta.encoder:
                raise EncoderMismatchError(
                    f"index {root} was built with encoder {store.meta.encoder!r}, not {canonical_spec(encoder)!r}; "
                    "drop --encoder to use the index's own, or build a new index with --index OTHER"
                )
            return cls(store, device=device, exact_max=exact_max, notify=notify)
        if not create:
            raise IndexNotFoundError(
                f"no index at {root}; build one with: retrv build-index FOLDER --index {index or root}"
            )
        loaded = load_encoder(encoder or "auto", device=device, notify=notify)
        store = Store.create(root, encoder_spec=loaded.spec, dim=loaded.dim)
        return cls(store, device=device, exact_max=exact_max, encoder=loaded, notify=notify)

    @property
    def root(self) -> Path:
        return self.store.root

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

    def add(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        **options: Any,
    ) -> BuildReport:
        """Index files and folders incrementally; see `retrv.index.build.build_index` for `options`."""
        from retrv.index.build import build_index

        report = build_index(
            self.store, self.encoder, [Path(p) for p in paths], progress=progress, should_stop=should_stop, **options
        )
        self._ann = None
        if not report.stopped and self.store.count():
            self.ann(progress)  # pay for the faiss index (HNSW above exact_max) now, not at the first search
        return report

    def ann(self, progress: ProgressCallback | None = None) -> AnnIndex:
        """The faiss index for the store's current version (loaded from cache, updated or built)."""
        from retrv.index.ann import AnnIndex

        self.store.refresh()
        if self._ann is None or self._ann_version != self.store.version():
            self._ann = AnnIndex.load_or_build(self.store, exact_max=self.exact_max, progress=progress)
            self._ann_version = self.store.version()
        return self._ann

    def embed_query(self, query: Query | str) -> np.ndarray:
        """One L2-normalised vector for a (possibly composed) query."""
        import numpy as np

        from retrv.encoders.base import combine

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

    def coarse(self, query: Query | str, k: int) -> tuple[list[Item], list[float]]:
        """The top-`k` stored items and their cosine scores, best first."""
        if self.store.count() == 0:
            raise RetrvError(
                f"index {self.root} is empty; add files with: retrv build-index FOLDER --index {self.root}"
            )
        vector = self.embed_query(query)
        scores, keys = self.ann().search(vector[None], k)
        pairs = [(int(key), float(s)) for key, s in zip(keys[0], scores[0]) if key != -1]
        items = self.store.items_for_keys([key for key, _ in pairs])
        found = [(item, s) for item, (_, s) in zip(items, pairs) if item is not None]
        return [item for item, _ in found], [s for _, s in found]

    def search(self, query: Query | str, k: int = 10) -> list[Hit]:
        """Coarse search only (no reranking); `retrv.Engine` adds stage 2."""
        items, scores = self.coarse(query, k)
        return [hit_from_item(rank, item, score) for rank, (item, score) in enumerate(zip(items, scores), 1)]

    def info(self) -> dict[str, Any]:
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
            "ann": __import__("retrv.index.ann", fromlist=["AnnIndex"]).AnnIndex.describe_cache(self.store),
        }


def hit_from_item(rank: int, item: Item, score: float, **extra: Any) -> Hit:
    return Hit(
        rank=rank,
        id=item.id,
        source=item.source,
        modality=item.modality,
        score=score,
        coarse_score=score,
        text=item.text,
        image_path=item.image_path,
        **extra,
    )


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def looks_like_image_path(text: str) -> bool:
    path = Path(text).expanduser()
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def load_query_image(path: str | os.PathLike[str]) -> Any:
    """Open a query image as RGB (the same safe decoding as indexing), or raise a one-line RetrvError."""
    from retrv.images import load_image
    from retrv.scan import SkipFile

    p = Path(path).expanduser()
    if not p.is_file():
        raise RetrvError(f"query image not found: {p}")
    try:
        return load_image(p)
    except SkipFile as e:
        raise RetrvError(f"cannot read query image {p}: {e}") from None


def split_modalities(paths: Sequence[str]) -> list[Query]:
    """`--add`/`--subtract` values: an existing image path is an image query, anything else text."""
    return [Query(image=p) if looks_like_image_path(p) else Query(text=p) for p in paths]
