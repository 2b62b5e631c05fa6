"""faiss over the store's vectors, cached on disk per `items` table version.

Up to `exact_max` vectors (default 50 000) the index is exact: `IndexFlatIP`, with no build cost
and a single-query latency linear in n (0.35-0.5 ms per 1k 512-d vectors on this project's busy
2-core CPU, about 20 ms at 50k; docs/benchmarks.md §2). Above it, an approximate index,
`AnnParams.large`:
- "hnsw" (default): `IndexHNSWFlat`, inner product. Queries take about 1 ms, with recall@50 = 1.0
  on clustered 100k data, but building is slow: 2-5 minutes per 100k vectors on one busy core.
- "ivf": `IndexIVFFlat` with about sqrt(n) lists. It builds 4-10x faster, queries take about
  1.4 ms at 100k, and recall@50 = 1.0 on clustered data.
Neither recalls the top 50 of i.i.d. random 512-d vectors well (the hard case; see §2).

The cache is `root/ann/v<version>.<kind>.faiss` + `.npz` (the key of every position in the faiss
index, which positions are dead, and the identity of the table version it was built from,
`Store.identity`: a cache of a table re-created at the same path, or rolled back and written again, has the
same version number but not the same identity, and is rebuilt). When the table moved on since the cached version, the index
is updated instead of rebuilt: rows written after the cached version (the store's `written`
column) are appended, and rows deleted or replaced since are removed (flat, IVF) or masked at
search time (HNSW cannot remove; it is rebuilt once more than `REBUILD_DEAD_FRACTION` is masked).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrv.progress import emit

if TYPE_CHECKING:
    from retrv.index.store import Store
    from retrv.progress import ProgressCallback

FLAT, HNSW, IVF = "flat", "hnsw", "ivf"
KINDS = (FLAT, HNSW, IVF)
EXACT_MAX = 50_000


@dataclass(frozen=True)
class AnnParams:
    """Chosen on 100k 512-d vectors, clustered and random (docs/benchmarks.md §2)."""

    large: str = HNSW  # the kind above exact_max: "hnsw" or "ivf"
    m: int = 32  # HNSW links per node (M=16, efC=40 builds 2x faster but plateaus at recall 0.99)
    ef_construction: int = 80
    ef_search: int = 128  # raised to k when k is larger
    nprobe: int = 16  # IVF lists scanned per query, of about sqrt(n)


ANN_PARAMS = AnnParams()
REBUILD_DEAD_FRACTION = 0.10
_IVF_TRAIN_PER_LIST = 48  # training sample per list (faiss wants >= 39)
_CACHE_NAME = re.compile(r"^v(\d+)\.(flat|hnsw|ivf)\.faiss$")
_ADD_BATCH = 65_536
_PARALLEL_MIN_QUERIES = 16
# A small update is not written back: replaying it from the older file is cheaper than writing a
# new file of up to a few GB (1M x 512-d HNSW: 2.3 GB) after every small incremental build.
_REPLAY_MAX = 1000
_SMALL_FILE_BYTES = 256 * 2**20  # below this, always write the updated index
_THREADS_LOCK = threading.Lock()


class AnnIndex:
    """Top-k inner-product search over one version of a store, returning faiss keys (see `key_for_id`)."""

    def __init__(
        self,
        index: Any,
        labels: np.ndarray,
        dead: np.ndarray,
        kind: str,
        version: int,
        params: AnnParams = ANN_PARAMS,
        path: Path | None = None,
        source: str = "built",
    ) -> None:
        self.index = index
        self.labels = labels  # position in the faiss index -> key
        self.dead = dead  # position -> gone (flat: never, it compacts; HNSW: masked; IVF: removed)
        self.kind = kind
        self.version = version
        self.params = params
        self.path = path
        self.source = source  # "cache" | "updated" | "built": how this object came to be
        self.replayed = 0  # rows added or removed by `_update` since the cache file was written
        self._selector: Any = None
        self._selector_bits: np.ndarray | None = None

    # ---- building ------------------------------------------------------------------------

    @classmethod
    def load_or_build(
        cls,
        store: Store,
        *,
        exact_max: int = EXACT_MAX,
        progress: ProgressCallback | None = None,
        params: AnnParams = ANN_PARAMS,
    ) -> AnnIndex:
        """The index for the store's current version: from the cache, by updating an older cache, or built."""
        if params.large not in (HNSW, IVF):
            raise ValueError(f"AnnParams.large must be {HNSW!r} or {IVF!r}, not {params.large!r}")
        version = store.version()
        kind = FLAT if store.count() <= exact_max else params.large
        cached = _cache_files(store)
        usable = [(v, k) for v, k in cached if v <= version and k == kind]
        ann = None
        if usable:
            v, k = max(usable)
            ann = cls._load(store, v, k, params)
            if ann is not None and v < version:
                ann = ann._update(store, progress)
        if ann is None:
            ann = cls.build(store, kind=kind, params=params, progress=progress)
        small_file = ann.index.ntotal * ann.index.d * 4 <= _SMALL_FILE_BYTES
        if ann.source == "built" or (ann.source == "updated" and (ann.replayed > _REPLAY_MAX or small_file)):
            ann._save(store)
        return ann

    @classmethod
    def build(
        cls, store: Store, *, kind: str, params: AnnParams = ANN_PARAMS, progress: ProgressCallback | None = None
    ) -> AnnIndex:
        """A fresh index over every stored vector (streamed in batches: one copy in memory, faiss's)."""
        total = store.count()
        ann = cls.new(kind, store.meta.dim, params=params, version=store.version(), n_hint=total)
        emit(progress, "ann", 0, total, f"building {kind} index")
        if kind == IVF:
            ann.train(_sample(store, _IVF_TRAIN_PER_LIST * ann.index.nlist))
        for keys, vectors in store.iter_vectors(batch_size=_ADD_BATCH):
            ann.add(keys, vectors)
            emit(progress, "ann", len(ann.labels), total)
        return ann

    @classmethod
    def new(
        cls, kind: str, dim: int, *, params: AnnParams = ANN_PARAMS, version: int = -1, n_hint: int = 0
    ) -> AnnIndex:
        """An empty index, not tied to a store (`add` vectors to it; benchmarks use this).
        An IVF index has `ivf_lists(n_hint)` lists and must be `train`ed before `add`."""
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
        index = _new_faiss(kind, dim, params, n_hint)
        return cls(index, np.zeros(0, np.int64), np.zeros(0, bool), kind, version, params)

    def train(self, sample: np.ndarray) -> None:
        """IVF only: learn the list centroids from a sample of the vectors."""
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def _update(self, store: Store, progress: ProgressCallback | None) -> AnnIndex | None:
        """Bring an older cached index to the store's version; None when a rebuild is the better deal."""
        current = store.keys()
        changed = list(store.written_since(self.version))
        changed_keys = np.concatenate([k for k, _ in changed]) if changed else np.zeros(0, np.int64)
        alive = ~self.dead
        gone = alive & (~np.isin(self.labels, current) | np.isin(self.labels, changed_keys))
        n_new = len(changed_keys)
        masked = self.dead.sum() + gone.sum()
        if self.kind == HNSW and masked > REBUILD_DEAD_FRACTION * (len(self.labels) + n_new):
            return None
        if self.kind == IVF and (masked > len(self.labels) // 2 or not _lists_fit(self.index, len(current))):
            return None  # positions mostly holes, or lists sized for a very different n: retrain
        emit(progress, "ann", 0, n_new, f"updating {self.kind} index: +{n_new} -{int(gone.sum())}")
        if self.kind == FLAT:
            self._remove(np.flatnonzero(gone))
        else:
            if self.kind == IVF and gone.any():
                import faiss

                self.index.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(gone).astype(np.int64)))
            self.dead = self.dead | gone
        for keys, vectors in changed:
            self.add(keys, vectors)
        if not np.array_equal(np.sort(self.labels[~self.dead]), np.sort(current)):
            return None  # not what the table holds (e.g. after a restore): rebuild
        self.version, self.source, self._selector = store.version(), "updated", None
        self.replayed = n_new + int(gone.sum())
        emit(progress, "ann", n_new, n_new)
        return self

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Append vectors under their keys (the caller keeps keys unique among live entries)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.kind == IVF:  # IVF stores ids: use positions, like the other kinds
            self.index.add_with_ids(vectors, np.arange(len(self.labels), len(self.labels) + len(keys), dtype=np.int64))
        else:
            self.index.add(vectors)
        self.labels = np.concatenate([self.labels, keys.astype(np.int64)])
        self.dead = np.concatenate([self.dead, np.zeros(len(keys), bool)])

    def _remove(self, positions: np.ndarray) -> None:
        import faiss

        if len(positions):
            self.index.remove_ids(faiss.IDSelectorBatch(positions.astype(np.int64)))  # keeps the order of the rest
            self.labels = np.delete(self.labels, positions)
            self.dead = np.delete(self.dead, positions)

    # ---- searching -----------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Searchable vectors (masked or removed ones excluded)."""
        return int(len(self.labels) - self.dead.sum())

    def search(
        self, query_vectors: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (q, k) float32 and keys (q, k) int64, best first; padded with -inf / -1 past ntotal. With
        `allowed` (keys), only those are searched (a faiss selector: exact for flat; HNSW and IVF may find fewer
        than k when few keys are allowed, which `Index.coarse` makes up for)."""
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(query_vectors), dtype=np.float32)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        keys = np.full((len(queries), k), -1, np.int64)
        selector, bits = None, None  # `bits` must outlive the search: the selector only points at it
        if allowed is not None:
            alive = np.isin(self.labels, allowed) & ~self.dead
            bits = np.packbits(alive, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(alive), faiss.swig_ptr(bits))
            fetch = min(k, int(alive.sum()))
        else:
            fetch = min(k, self.ntotal)
            if self.dead.any():
                selector = self._alive_selector()
        if fetch == 0 or not len(queries):
            return scores, keys
        if self.kind == HNSW:
            search_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # faiss's stubs lag
            search_params.efSearch = max(self.params.ef_search, fetch)
        elif self.kind == IVF:
            search_params = faiss.SearchParametersIVF()
            search_params.nprobe = min(self.params.nprobe, self.index.nlist)
        else:
            search_params = faiss.SearchParameters()
        if selector is not None:
            search_params.sel = selector
        with _single_thread(len(queries) < _PARALLEL_MIN_QUERIES):
            dist, pos = self.index.search(queries, fetch, params=search_params)
        found = pos >= 0
        scores[:, :fetch] = np.where(found, dist, -np.inf)
        keys[:, :fetch] = np.where(found, self.labels[np.where(found, pos, 0)], -1)
        return scores, keys

    def _alive_selector(self) -> Any:
        import faiss

        if self._selector is None:
            self._selector_bits = np.packbits(~self.dead, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(len(self.dead), faiss.swig_ptr(self._selector_bits))
        return self._selector

    def stats(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": self.kind,
            "ntotal": self.ntotal,
            "masked": int(self.dead.sum()),
            "version": self.version,
            "source": self.source,
            "file": str(self.path) if self.path else None,
            "file_bytes": self.path.stat().st_size if self.path and self.path.exists() else None,
        }
        if self.kind == HNSW:
            info.update(m=self.params.m, ef_construction=self.params.ef_construction, ef_search=self.params.ef_search)
        elif self.kind == IVF:
            info.update(nlist=self.index.nlist, nprobe=self.params.nprobe)
        return info

    @staticmethod
    def describe_cache(store: Store) -> dict[str, Any] | None:
        """What the on-disk cache holds, without loading it (for `retrv info`); None if nothing is cached."""
        cached = _cache_files(store)
        if not cached:
            return None
        version, kind = max(cached)
        path = _cache_path(store, version, kind)
        try:
            with np.load(path.with_suffix(".npz")) as arrays:
                built_from = str(arrays["identity"])
        except (OSError, KeyError, ValueError):
            built_from = ""
        return {
            "kind": kind,
            "version": version,
            "current": version == store.version() and bool(built_from) and built_from == store.identity(),
            "file": str(path),
            "file_bytes": path.stat().st_size if path.exists() else None,
        }

    # ---- cache files ---------------------------------------------------------------------

    @classmethod
    def _load(cls, store: Store, version: int, kind: str, params: AnnParams) -> AnnIndex | None:
        import faiss

        path = _cache_path(store, version, kind)
        identity = store.identity(version)
        try:
            with np.load(path.with_suffix(".npz")) as arrays:
                labels, dead = arrays["labels"], arrays["dead"]
                if not identity or str(arrays["identity"]) != identity:
                    return None  # built from another table that had this version number: rebuild
            index = faiss.read_index(str(path))
        except (OSError, RuntimeError, KeyError, ValueError):
            return None  # unreadable, half-deleted by another process, or from before identities: rebuild
        if index.ntotal != len(labels) - (int(dead.sum()) if kind == IVF else 0) or index.d != store.meta.dim:
            return None
        if kind == HNSW:
            graph = index.hnsw  # type: ignore[attr-defined]  # an IndexHNSWFlat, as _new_faiss makes it
            params = replace(params, m=graph.nb_neighbors(1), ef_construction=graph.efConstruction)
        return cls(index, labels, dead, kind, version, params, path=path, source="cache")

    def _save(self, store: Store) -> None:
        """Write this version's files (npz first, faiss last: the .faiss name marks a complete pair)."""
        import faiss

        path = _cache_path(store, self.version, self.kind)
        tmp = f".{os.getpid()}.{threading.get_ident()}.tmp"  # two processes may save the same version
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".npz" + tmp), "wb") as f:
                np.savez(f, labels=self.labels, dead=self.dead, identity=np.array(store.identity(self.version)))
            path.with_suffix(".npz" + tmp).replace(path.with_suffix(".npz"))
            faiss.write_index(self.index, str(path.with_suffix(".faiss" + tmp)))
            path.with_suffix(".faiss" + tmp).replace(path)
        except (OSError, RuntimeError):
            for leftover in path.parent.glob(f"*{tmp}"):
                leftover.unlink(missing_ok=True)
            return  # a read-only or full disk: the index still searches, from memory
        self.path = path
        for version, kind in _cache_files(store):
            if version < self.version or (version == self.version and kind != self.kind):
                for stale in (_cache_path(store, version, kind), _cache_path(store, version, kind).with_suffix(".npz")):
                    stale.unlink(missing_ok=True)


@contextmanager
def _single_thread(enabled: bool) -> Iterator[None]:
    """Run faiss on one thread. For a few queries, OpenMP splits the scan and waits on barriers: on a
    busy 2-core machine a flat single query at 20k took 44 ms on 2 threads and 2.6 ms on one."""
    import faiss

    if not enabled:
        yield
        return
    with _THREADS_LOCK:  # the thread count is process-wide: one switch at a time
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists, each with enough vectors to train on."""
    return max(1, min(int(np.sqrt(max(n, 1))), n // _IVF_TRAIN_PER_LIST))


def _lists_fit(index: Any, n: int) -> bool:
    return 0.5 <= ivf_lists(n) / index.nlist <= 2


def _sample(store: Store, size: int) -> np.ndarray:
    """About `size` vectors spread evenly over the table (every step-th row of each batch)."""
    step = max(1, store.count() // max(size, 1))
    return np.concatenate([v[::step] for _, v in store.iter_vectors(batch_size=_ADD_BATCH)])


def _new_faiss(kind: str, dim: int, params: AnnParams, n_hint: int) -> Any:
    import faiss

    if kind == FLAT:
        return faiss.IndexFlatIP(dim)
    if kind == IVF:
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, ivf_lists(n_hint), faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    return index


def _cache_path(store: Store, version: int, kind: str) -> Path:
    return store.root / "ann" / f"v{version}.{kind}.faiss"


def _cache_files(store: Store) -> list[tuple[int, str]]:
    folder = store.root / "ann"
    if not folder.is_dir():
        return []
    found = [_CACHE_NAME.match(p.name) for p in folder.iterdir()]
    return [(int(m.group(1)), m.group(2)) for m in found if m]
