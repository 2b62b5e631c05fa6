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
With a memory budget (`budget`, from `--ann-memory`), `retrv.index.ann_plan` chooses instead, down to
"ivfpq": IVF with product-quantized codes (OPQ-rotated where that helps), whose top candidates are re-ranked
exactly with the stored vectors (`retrv.index.refine`); one too large for the budget keeps its inverted lists
on disk, memory-mapped: it is built in shards (each a copy of the trained empty index, written to disk) merged
on disk into one file of lists (faiss's `OnDiskInvertedLists`).

The cache is `root/ann/v<version>.<kind>.faiss` + `.npz` (the key of every position in the faiss
index, which positions are dead, and the identity of the table version it was built from,
`Store.identity`: a cache of a table re-created at the same path, or rolled back and written again, has the
same version number but not the same identity, and is rebuilt). An IVF-PQ cache adds `.vectors` (the
re-rank rows) and, memory-mapped, `.ivfdata` (its lists). When the table moved on since the cached version, the index
is updated instead of rebuilt: rows written after the cached version (the store's `written`
column) are appended, and rows deleted or replaced since are removed (flat, IVF) or masked at
search time (HNSW cannot remove; it is rebuilt once more than `REBUILD_DEAD_FRACTION` is masked).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrv.index.ann_plan import FLAT, HNSW, IVF, IVF_TRAIN_PER_LIST, IVFPQ, AnnPlan, ivf_lists, plan_ann
from retrv.index.refine import RefineVectors, exact_rerank
from retrv.progress import emit

if TYPE_CHECKING:
    from retrv.index.store import Store
    from retrv.progress import ProgressCallback

KINDS = (FLAT, HNSW, IVF, IVFPQ)
# Adds the rows [start, stop) of a store's version to copies of a trained empty index (faiss's serialized bytes):
# for each range, the keys it read (in the store's scan order) and the filled copy, serialized. The local way is
# `_add_on_disk`'s own loop; `retrv.index.distributed.ray_shard_add` runs the ranges as Ray tasks.
ShardAdd = Callable[["Store", bytes, list[tuple[int, int]]], Iterator[tuple[np.ndarray, np.ndarray]]]
EXACT_MAX = 50_000


@dataclass(frozen=True)
class AnnParams:
    """Chosen on 100k 512-d vectors, clustered and random (docs/benchmarks.md §2)."""

    large: str = HNSW  # the kind above exact_max: "hnsw" or "ivf"
    m: int = 32  # HNSW links per node (M=16, efC=40 builds 2x faster but plateaus at recall 0.99)
    ef_construction: int = 80
    ef_search: int = 128  # raised to k when k is larger
    nprobe: int = 16  # IVF lists scanned per query, of about sqrt(n)
    rerank: int = 200  # IVF-PQ: candidates re-ranked exactly, at least (see `_rerank_depth`)


ANN_PARAMS = AnnParams()
REBUILD_DEAD_FRACTION = 0.10
_OPQ_ITERATIONS = (
    16  # faiss's default 50 trained 3x longer for the same recall after the re-rank (docs/benchmarks.md §9.2)
)
_PQ_TRAIN_MIN = 64 * 256  # PQ learns 256 centroids per sub-quantizer
_SHARD_ROWS = 1_000_000  # an on-disk IVF-PQ is added in shards of this many vectors, merged on disk
_CACHE_NAME = re.compile(r"^v(\d+)\.(flat|hnsw|ivf|ivfpq)\.faiss$")
_SIDE_SUFFIXES = (".npz", ".vectors", ".ivfdata")
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
        plan: AnnPlan | None = None,
        refine: RefineVectors | None = None,
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
        self.plan = plan  # what was chosen and why (kind, parameters, expected memory)
        self.refine = refine  # IVF-PQ: the full vectors by position, for the exact re-rank
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
        budget: int | None = None,
        add_shards: ShardAdd | None = None,
    ) -> AnnIndex:
        """The index for the store's current version: from the cache, by updating an older cache, or built.
        `budget` (bytes) chooses the kind to fit (`retrv.index.ann_plan`); None keeps the size rule. An on-disk
        IVF-PQ is filled by `add_shards` when given (on Ray), else here."""
        if params.large not in (HNSW, IVF):
            raise ValueError(f"AnnParams.large must be {HNSW!r} or {IVF!r}, not {params.large!r}")
        version = store.version()
        cached = _cache_files(store)
        if budget is None and cached:  # a budget given once holds for the index's later versions
            described = cls.describe_cache(store) or {}
            budget = (described.get("plan") or {}).get("budget_bytes")
        plan = plan_ann(
            store.count(), store.meta.dim, budget=budget, exact_max=exact_max, large=params.large, hnsw_m=params.m
        )
        usable = [(v, k) for v, k in cached if v <= version and k == plan.kind]
        ann = None
        if usable:
            v, k = max(usable)
            ann = cls._load(store, v, k, params)
            if ann is not None and not _plan_fits(ann.plan, plan):
                ann = None  # built for another budget or a very different size
            if ann is not None and v < version:
                ann = ann._update(store, progress)
        if ann is None:
            ann = cls.build(store, kind=plan.kind, params=params, progress=progress, plan=plan, add_shards=add_shards)
        small_file = ann.index.ntotal * ann.index.d * 4 <= _SMALL_FILE_BYTES
        if ann.source == "built" or (ann.source == "updated" and (ann.replayed > _REPLAY_MAX or small_file)):
            ann._save(store)
        return ann

    @classmethod
    def build(
        cls,
        store: Store,
        *,
        kind: str,
        params: AnnParams = ANN_PARAMS,
        progress: ProgressCallback | None = None,
        plan: AnnPlan | None = None,
        add_shards: ShardAdd | None = None,
    ) -> AnnIndex:
        """A fresh index over every stored vector (streamed in batches: one copy in memory, faiss's; an IVF-PQ's
        full vectors go to its re-rank file, an on-disk one's lists to shard files merged on disk)."""
        total = store.count()
        store.ann_dir.mkdir(parents=True, exist_ok=True)
        refine_path = _cache_path(store, store.version(), kind).with_suffix(f".vectors.{os.getpid()}.building")
        ann = cls.new(
            kind, store.meta.dim, params=params, version=store.version(), n_hint=total, plan=plan, refine=refine_path
        )
        emit(progress, "ann", 0, total, f"building {kind} index")
        if kind in (IVF, IVFPQ):
            ann.train(_sample(store, max(IVF_TRAIN_PER_LIST * ann.nlist, _PQ_TRAIN_MIN if kind == IVFPQ else 0)))
        if ann.plan is not None and ann.plan.mmap:
            ann._add_on_disk(store, _cache_path(store, store.version(), kind), add_shards)
            emit(progress, "ann", len(ann.labels), total)
        else:
            for keys, vectors in store.iter_vectors(batch_size=_ADD_BATCH):
                ann.add(keys, vectors)
                emit(progress, "ann", len(ann.labels), total)
        if ann.refine is not None:
            ann.refine.finish()
        return ann

    def _add_on_disk(self, store: Store, path: Path, add_shards: ShardAdd | None) -> None:
        """Add every stored vector in shards of `_SHARD_ROWS` (each a copy of the trained empty index, written to
        disk; filled here, or by `add_shards`), then merge the shards' lists into `path`'s `.ivfdata` file,
        memory-mapped (faiss's on-disk lists). The keys and re-rank vectors are read here, in scan order."""
        import faiss
        from faiss.contrib.ondisk import merge_ondisk

        shards: list[str] = []
        try:
            if add_shards is None:
                shard = faiss.clone_index(self.index)
                for keys, vectors in store.iter_vectors(batch_size=_ADD_BATCH):
                    positions = np.arange(len(self.labels), len(self.labels) + len(keys), dtype=np.int64)
                    shard.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), positions)
                    self._append_positions(keys, vectors)
                    if shard.ntotal >= _SHARD_ROWS:
                        shards.append(self._write_shard(shard, path, len(shards)))
                        shard = faiss.clone_index(self.index)
                if shard.ntotal:
                    shards.append(self._write_shard(shard, path, len(shards)))
            else:
                for keys, vectors in store.iter_vectors(batch_size=_ADD_BATCH):
                    self._append_positions(keys, vectors)
                n = len(self.labels)
                ranges = [(start, min(start + _SHARD_ROWS, n)) for start in range(0, n, _SHARD_ROWS)]
                trained = faiss.serialize_index(self.index).tobytes()
                for (start, stop), (keys, filled) in zip(ranges, add_shards(store, trained, ranges), strict=True):
                    if not np.array_equal(keys, self.labels[start:stop]):
                        raise RuntimeError(f"shard {start}:{stop} read other rows than the build; rebuild the index")
                    shards.append(self._write_shard(faiss.deserialize_index(filled), path, len(shards)))
            with _native_chatter_silenced():  # faiss prints "resizing …" on stdout, where --json goes
                merge_ondisk(self.index, shards, str(path.with_suffix(".ivfdata")))
        finally:
            for name in shards:
                Path(name).unlink(missing_ok=True)

    @staticmethod
    def _write_shard(shard: Any, path: Path, number: int) -> str:
        import faiss

        name = str(path.with_suffix(f".shard{number}.{os.getpid()}"))
        faiss.write_index(shard, name)
        return name

    @classmethod
    def new(
        cls,
        kind: str,
        dim: int,
        *,
        params: AnnParams = ANN_PARAMS,
        version: int = -1,
        n_hint: int = 0,
        plan: AnnPlan | None = None,
        refine: Path | None = None,
    ) -> AnnIndex:
        """An empty index, not tied to a store (`add` vectors to it; benchmarks use this).
        An IVF index has `ivf_lists(n_hint)` lists and must be `train`ed before `add`. An IVF-PQ index follows
        `plan` (default: the plan for a budget of 1 byte per dimension per vector) and writes its re-rank vectors
        to the file `refine` (default: kept in memory)."""
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
        if plan is None or plan.kind != kind:
            nlist = ivf_lists(n_hint) if kind in (IVF, IVFPQ) else 0
            budget = max(n_hint, 1) * dim if kind == IVFPQ else None
            plan = plan_ann(n_hint, dim, budget=budget, exact_max=-1, large=HNSW if kind != IVF else IVF)
            plan = plan if plan.kind == kind else AnnPlan(kind, n_hint, dim, plan.expected_bytes, nlist=nlist)
        if kind == IVFPQ:
            import faiss

            index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
            # Polysemous codes serve Hamming pre-filtering, which the exact re-rank makes moot; training them took
            # 3x as long as the PQ itself here.
            ivfpq: Any = faiss.downcast_index(faiss.extract_index_ivf(index))  # faiss's stubs lag: Any
            ivfpq.do_polysemous_training = False
            if plan.opq:
                pretransform: Any = faiss.downcast_index(index)
                rotation: Any = faiss.downcast_VectorTransform(pretransform.chain.at(0))
                rotation.niter = _OPQ_ITERATIONS
            vectors = RefineVectors(dim, refine, writable=refine is not None)
        else:
            index, vectors = _new_faiss(kind, dim, params, n_hint), None
        return cls(index, np.zeros(0, np.int64), np.zeros(0, bool), kind, version, params, plan=plan, refine=vectors)

    @property
    def nlist(self) -> int:
        import faiss

        return int(faiss.extract_index_ivf(self.index).nlist) if self.kind in (IVF, IVFPQ) else 0

    def train(self, sample: np.ndarray) -> None:
        """IVF kinds only: learn the list centroids (and the PQ codebooks, the OPQ rotation) from a sample."""
        with _native_chatter_silenced():  # a small index: a "please provide at least N training points" per k-means
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
        if self.kind in (IVF, IVFPQ) and (masked > len(self.labels) // 2 or not _lists_fit(self.nlist, len(current))):
            return None  # positions mostly holes, or lists sized for a very different n: retrain
        if self.plan is not None and self.plan.mmap:
            return None  # memory-mapped read-only lists: rebuilt in shards
        emit(progress, "ann", 0, n_new, f"updating {self.kind} index: +{n_new} -{int(gone.sum())}")
        if self.kind == FLAT:
            self._remove(np.flatnonzero(gone))
        else:
            if self.kind in (IVF, IVFPQ) and gone.any():
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
        if self.kind in (IVF, IVFPQ):  # IVF stores ids: use positions, like the other kinds
            self.index.add_with_ids(vectors, np.arange(len(self.labels), len(self.labels) + len(keys), dtype=np.int64))
        else:
            self.index.add(vectors)
        self._append_positions(keys, vectors)

    def _append_positions(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.labels = np.concatenate([self.labels, keys.astype(np.int64)])
        self.dead = np.concatenate([self.dead, np.zeros(len(keys), bool)])
        if self.refine is not None:
            self.refine.append(vectors)

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
        elif self.kind in (IVF, IVFPQ):
            search_params = faiss.SearchParametersIVF()
            search_params.nprobe = min(self.params.nprobe, self.nlist)
        else:
            search_params = faiss.SearchParameters()
        if selector is not None:
            search_params.sel = selector
        if isinstance(self.index, faiss.IndexPreTransform):  # the OPQ rotation wraps the IVF index
            search_params, ivf_params = faiss.SearchParametersPreTransform(), search_params
            search_params.index_params = ivf_params
        candidates = min(self._rerank_depth(fetch), self.ntotal) if self.kind == IVFPQ else fetch
        with _single_thread(len(queries) < _PARALLEL_MIN_QUERIES):
            dist, pos = self.index.search(queries, candidates, params=search_params)
        if self.kind == IVFPQ and self.refine is not None:
            dist, pos = exact_rerank(queries, pos, self.refine, fetch)
        found = pos >= 0
        scores[:, :fetch] = np.where(found, dist, -np.inf)
        keys[:, :fetch] = np.where(found, self.labels[np.where(found, pos, 0)], -1)
        return scores, keys

    def _rerank_depth(self, k: int) -> int:
        """IVF-PQ candidates re-ranked exactly for a top k: more the coarser the codes (dimensions per code byte)
        and the more vectors crowd each neighbourhood (growing as sqrt(n / 1M)). On clustered vectors (docs/
        benchmarks.md §9.2): at 1M x 512-d, 200 candidates recalled 0.97 of the top 50 with 128-byte codes and
        0.56 with 32-byte ones, 800 recalled 0.98; at 2M x 384-d with 24-byte codes 600, 1200 and 2400 recalled
        0.84, 0.94 and 1.00; at 5M x 384-d with 32-byte codes 1341, 2682 and 4023 recalled 0.86, 0.97 and 1.00
        (+0.7 ms for the second). Hence twice k x dimensions per byte x crowding."""
        per_byte = self.plan.dim // self.plan.m if self.plan is not None and self.plan.m else 4
        crowding = max(1.0, float(np.sqrt(self.ntotal / 1e6)))
        return max(self.params.rerank, int(2 * k * max(4, per_byte) * crowding))

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
        elif self.kind in (IVF, IVFPQ):
            info.update(nlist=self.nlist, nprobe=self.params.nprobe)
        if self.kind == IVFPQ:
            info.update(rerank=self.params.rerank)
        if self.plan is not None:
            info["plan"] = self.plan.describe()
        return info

    @staticmethod
    def describe_cache(store: Store) -> dict[str, Any] | None:
        """What the on-disk cache holds, without loading it (for `retrv info`); None if nothing is cached."""
        cached = _cache_files(store)
        if not cached:
            return None
        version, kind = max(cached)
        path = _cache_path(store, version, kind)
        plan = None
        try:
            with np.load(path.with_suffix(".npz")) as arrays:
                built_from = str(arrays["identity"])
                plan = _plan_from(arrays)
        except (OSError, KeyError, ValueError):
            built_from = ""
        described: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "current": version == store.version() and bool(built_from) and built_from == store.identity(),
            "file": str(path),
            "file_bytes": path.stat().st_size if path.exists() else None,
        }
        if plan is not None:
            described["plan"] = plan.describe()
        return described

    # ---- cache files ---------------------------------------------------------------------

    @classmethod
    def _load(cls, store: Store, version: int, kind: str, params: AnnParams) -> AnnIndex | None:
        import faiss

        path = _cache_path(store, version, kind)
        identity = store.identity(version)
        refine = None
        try:
            with np.load(path.with_suffix(".npz")) as arrays:
                labels, dead = arrays["labels"], arrays["dead"]
                if not identity or str(arrays["identity"]) != identity:
                    return None  # built from another table that had this version number: rebuild
                plan = _plan_from(arrays)
            if kind == IVFPQ:
                refine = RefineVectors.open(path.with_suffix(".vectors"), store.meta.dim)
                if len(refine) != len(labels):
                    return None
            if plan is not None and plan.mmap:
                with _native_chatter_silenced():  # faiss reports the on-disk lists' file on stdout
                    index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
            else:
                index = faiss.read_index(str(path))
        except (OSError, RuntimeError, KeyError, ValueError):
            return None  # unreadable, half-deleted by another process, or from before identities: rebuild
        removes = kind in (IVF, IVFPQ)
        if index.ntotal != len(labels) - (int(dead.sum()) if removes else 0) or index.d != store.meta.dim:
            return None
        if kind == HNSW:
            graph = index.hnsw  # type: ignore[attr-defined]  # an IndexHNSWFlat, as _new_faiss makes it
            params = replace(params, m=graph.nb_neighbors(1), ef_construction=graph.efConstruction)
        return cls(index, labels, dead, kind, version, params, path=path, source="cache", plan=plan, refine=refine)

    def _save(self, store: Store) -> None:
        """Write this version's files (npz first, faiss last: the .faiss name marks a complete pair)."""
        import faiss

        path = _cache_path(store, self.version, self.kind)
        tmp = f".{os.getpid()}.{threading.get_ident()}.tmp"  # two processes may save the same version
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".npz" + tmp), "wb") as f:
                plan = np.array(json.dumps(self.plan.__dict__) if self.plan is not None else "")
                identity = np.array(store.identity(self.version))
                np.savez(f, labels=self.labels, dead=self.dead, identity=identity, plan=plan)
            path.with_suffix(".npz" + tmp).replace(path.with_suffix(".npz"))
            if self.refine is not None:
                self._save_refine(path.with_suffix(".vectors"), tmp)
            faiss.write_index(self.index, str(path.with_suffix(".faiss" + tmp)))
            path.with_suffix(".faiss" + tmp).replace(path)
        except (OSError, RuntimeError):
            for leftover in path.parent.glob(f"*{tmp}"):
                leftover.unlink(missing_ok=True)
            return  # a read-only or full disk: the index still searches, from memory
        self.path = path
        for version, kind in _cache_files(store):
            if version < self.version or (version == self.version and kind != self.kind):
                stale = _cache_path(store, version, kind)
                for name in (stale, *(stale.with_suffix(suffix) for suffix in _SIDE_SUFFIXES)):
                    name.unlink(missing_ok=True)
        for leftover in path.parent.glob(f"*.{os.getpid()}.building"):
            leftover.unlink(missing_ok=True)

    def _save_refine(self, target: Path, tmp: str) -> None:
        """The re-rank vectors beside the index: the file built for it renamed, or a copy with the rows added."""
        assert self.refine is not None
        if (
            self.refine.path is not None
            and self.refine.path.name.endswith(".building")
            and len(self.refine) == (self.refine.path.stat().st_size // (4 * self.refine.dim))
        ):
            self.refine.path.replace(target)
            self.refine.adopt(target)
        elif self.refine.path != target or len(self.refine) * 4 * self.refine.dim != target.stat().st_size:
            self.refine.save(target.with_suffix(".vectors" + tmp))
            assert self.refine.path is not None
            self.refine.path.replace(target)
            self.refine.adopt(target)


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


@contextmanager
def _native_chatter_silenced() -> Iterator[None]:
    """Drop what faiss's C++ code prints on file descriptors 1 and 2 meanwhile: notes and warnings for developers
    ("resizing", "updating ondisk filename", too few training points), on stdout where results go (`--json`).
    Its errors still arrive, as exceptions."""
    import sys

    with _FD_LOCK:  # two threads at once would each save the other's /dev/null
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, null):
                os.close(fd)


_FD_LOCK = threading.Lock()


def _plan_from(arrays: Any) -> AnnPlan | None:
    text = str(arrays["plan"]) if "plan" in arrays.files else ""
    return AnnPlan(**json.loads(text)) if text else None


def _plan_fits(cached: AnnPlan | None, wanted: AnnPlan) -> bool:
    """Whether a cached index may be updated instead of rebuilt for `wanted`: same kind and, for IVF-PQ, the same
    code size and storage (a cache from before plans is kept as before)."""
    if cached is None or cached.kind != IVFPQ:
        return True
    return (cached.m, cached.opq, cached.mmap) == (wanted.m, wanted.opq, wanted.mmap)


def _lists_fit(nlist: int, n: int) -> bool:
    return 0.5 <= ivf_lists(n) / nlist <= 2


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
    return store.ann_dir / f"v{version}.{kind}.faiss"


def _cache_files(store: Store) -> list[tuple[int, str]]:
    folder = store.ann_dir
    if not folder.is_dir():
        return []
    found = [_CACHE_NAME.match(p.name) for p in folder.iterdir()]
    return [(int(m.group(1)), m.group(2)) for m in found if m]
