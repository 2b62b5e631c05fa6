"""The index on disk: `retrv.json`, a LanceDB database (`items` + reasoner side tables), the faiss cache.

Layout of an index root:

    retrv.json      IndexMeta: schema version, encoder spec, dim, retrv version, creation time
    lance/          LanceDB: `items` (one row per Item + its vector) and side tables (e.g. `icm_<reasoner>`)
    ann/            faiss cache, one file per `items` version (see `retrv.index.ann`)

An index on object storage (`s3://bucket/prefix`, `gs://…`, `az://…`) has the same `lance/` under its URI,
reached with Lance's own object-store client (credentials and endpoint from the usual environment variables,
or `storage_options`). It has no `retrv.json`: the same IndexMeta lives in the `items` table's schema metadata
(every index writes it there), which Lance commits with the table's first version, so a half-created index
cannot exist. Its faiss cache lives on the local disk (`ann_dir`).

Every write is one Lance version, so a reader always sees the last complete write and an
interrupted build leaves the previous version readable. A Store keeps reading the version it last
saw until `refresh()`. Threads sharing a Store (the server's) hold `version_lock` across reads that must see
one version (the faiss index is built or updated under it), since `refresh()` moves the version they read.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import inspect
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from retrv.config import INDEX_META_FILE as META_FILE
from retrv.config import cache_dir, is_uri
from retrv.errors import DiskFullError, IndexDamagedError, IndexNotFoundError, IndexSchemaError, RetrvError
from retrv.index.filters import sql_quote
from retrv.items import Item

if TYPE_CHECKING:
    import pyarrow as pa

# 2: the `date` column (EXIF capture time, else mtime). A version-1 index reads as is (dates are the mtimes)
# and becomes version 2 at its next write.
SCHEMA_VERSION = 2
ITEMS = "items"
ITEM_COLUMNS = ("id", "source", "modality", "text", "image_path", "mtime", "size", "content_hash", "date")
_IN_CHUNK = 2000  # values per `col IN (...)` filter
_SIDE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SHAPE_KEY = b"retrv.shape"
_META_KEY = b"retrv.meta"


@dataclass(frozen=True)
class IndexMeta:
    schema_version: int
    encoder: str
    dim: int
    retrv_version: str
    created: str


@dataclass(frozen=True)
class FileState:
    """What an incremental build compares a file against."""

    id: str
    mtime: float
    size: int
    content_hash: str


def key_for_id(item_id: str) -> int:
    """A stable non-negative 63-bit key (the faiss id) for an item id; -1 stays free for padding."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _lancedb() -> Any:
    os.environ.setdefault("RUST_LOG", "error")  # Lance logs a WARN line per query otherwise
    import lancedb

    return lancedb


def _retrv_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retrv")
    except PackageNotFoundError:
        return "unknown"


def _in_filters(column: str, values: Sequence[Any]) -> Iterator[str]:
    """`column IN (...)` filters over chunks of `values` (strings quoted, ints as is)."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        literals = ", ".join(sql_quote(v) if isinstance(v, str) else str(int(v)) for v in chunk)
        yield f"{column} IN ({literals})"


F = TypeVar("F", bound=Callable[..., Any])


def lance_errors(method: F) -> F:
    """Errors of Lance reading or writing this index become one-line RetrvErrors: a full disk says so, damaged
    files are named with the repair to run. Anything else (retrv's own checks) passes through."""

    def translate(self: Store, exc: BaseException) -> BaseException:
        text = str(exc)
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text:
            return DiskFullError(
                f"no space left on the device of {self.root}: the index keeps its last complete write; "
                "free some space and run the command again"
            )
        if "lance" not in text.lower():
            return exc
        if self.remote:
            return RetrvError(
                f"index {self.root} could not be read or written on its object store ({object_store_cause(text)})"
            )
        if not (Path(self.root) / META_FILE).is_file():
            return IndexNotFoundError(f"index {self.root} no longer exists (it was removed while in use)")
        from retrv.index.repair import describe_damage

        return IndexDamagedError(
            f"index {self.root} is damaged ({describe_damage(Path(self.root), exc)}); "
            f"run `retrv index repair --index {self.root}`, then build-index to add back what it lost"
        )

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except (OSError, RuntimeError, ValueError) as exc:
                raise translate(self, exc) from exc

        return generator  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise translate(self, exc) from exc

    return wrapper  # type: ignore[return-value]


def is_remote(root: Path | str) -> bool:
    """An index on object storage: its root is a URI string (`config.resolve_index_path`)."""
    return isinstance(root, str) and is_uri(root)


def read_meta(root: Path | str, storage_options: dict[str, str] | None = None) -> IndexMeta:
    """The index's meta (`retrv.json`, or the table's schema metadata on object storage), checked;
    IndexNotFoundError or IndexSchemaError with what is wrong."""
    missing = IndexNotFoundError(f"no index at {root}; build one with: retrv build-index FOLDER --index {root}")
    if is_remote(root):
        where = f"{root} (items table metadata)"
        table = _open_remote_items(str(root), storage_options)
        text = (table.schema.metadata or {}).get(_META_KEY) if table is not None else None
        if text is None:
            raise missing
    else:
        meta_path = Path(root) / META_FILE
        if not meta_path.is_file():
            raise missing
        where, text = str(meta_path), meta_path.read_bytes()
    return _checked_meta(root, where, text)


def _checked_meta(root: Path | str, where: str, text: bytes) -> IndexMeta:
    try:
        raw = json.loads(text)
        meta = IndexMeta(**{f: raw[f] for f in IndexMeta.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as e:
        raise IndexSchemaError(f"{where}: not a valid retrv index file ({e})") from None
    if not isinstance(meta.schema_version, int) or meta.schema_version > SCHEMA_VERSION:
        raise IndexSchemaError(
            f"index {root} has schema version {meta.schema_version!r}, but this retrv "
            f"({_retrv_version()}) reads up to {SCHEMA_VERSION}; upgrade retrv or rebuild the index"
        )
    return meta


def _write_meta(root: Path, meta: IndexMeta) -> None:
    tmp = root / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(meta), indent=2) + "\n")
    tmp.replace(root / META_FILE)


def _connect(root: Path | str, storage_options: dict[str, str] | None) -> Any:
    """The LanceDB database of the index at `root`; on object storage, a store that cannot be reached or refuses
    is a one-line error."""
    if not is_remote(root):
        return _lancedb().connect(str(Path(root) / "lance"))
    try:
        return _lancedb().connect(f"{root}/lance", storage_options=storage_options or None)
    except (OSError, RuntimeError, ValueError) as e:
        raise _unreachable(root, e) from None


def object_store_cause(text: str) -> str:
    """What an object store's error (Lance's Rust debug text) comes down to, in a few words: the store's own error
    code and message, a refused or unknown host, or an HTTP status; else the start of the text."""
    endpoint = re.search(r"uri: Some\((\w+://[^/)\s]+)", text)
    at = f" at {endpoint.group(1)}" if endpoint else ""
    code = re.search(r"<Code>([^<]+)</Code>(?:\s*<Message>([^<]+)</Message>)?", text)
    if code:
        return f"{code.group(1)}{': ' + code.group(2) if code.group(2) else ''}{at}"
    if "ConnectionRefused" in text or "Connection refused" in text:
        return f"connection refused{at}"
    if "dns error" in text.lower() or "failed to lookup address" in text.lower():
        return f"host not found{at}"
    if "TimedOut" in text or "timed out" in text.lower():
        return f"timed out{at}"
    status = re.search(r"status: (\d{3})", text)
    if status:
        return f"HTTP {status.group(1)}{at}"
    return " ".join(text.split())[:200]


def _unreachable(root: Path | str, exc: BaseException) -> RetrvError:
    detail = object_store_cause(str(exc))
    return RetrvError(
        f"index {root}: its object store could not be reached or refused the request ({detail}); check the "
        "endpoint and credentials (AWS_*, GOOGLE_*, AZURE_* variables or --storage-options)"
    )


def _open_remote_items(uri: str, storage_options: dict[str, str] | None) -> Any:
    """The `items` table of the index at `uri`, or None when there is none."""
    db = _connect(uri, storage_options)
    try:
        return db.open_table(ITEMS)
    except ValueError as e:
        if "not found" in str(e).lower():  # LanceDB: "Table 'items' was not found"
            return None
        raise _unreachable(uri, e) from None
    except (OSError, RuntimeError) as e:
        raise _unreachable(uri, e) from None


def _fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array, dtype: Any = np.float32) -> np.ndarray:
    """A fixed_size_list column as a (rows, size) array (zero-copy for a single chunk)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    size = column.type.list_size
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, size) for c in chunks if len(c)]
    if not parts:
        return np.zeros((0, size), dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Store:
    """One index root (a local directory, or an object-store URI). Create with `Store.create`, open with
    `Store.open`."""

    def __init__(
        self, root: Path | str, meta: IndexMeta, db: Any, table: Any, storage_options: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.meta = meta
        self.storage_options = dict(storage_options or {})
        self._db = db
        self._table = table
        self.version_lock = threading.RLock()  # refresh and checkout wait for whoever holds it

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def ann_dir(self) -> Path:
        """Where the faiss cache lives (its files are keyed by table version and identity)."""
        return self.local_folder("ann")

    def local_folder(self, name: str) -> Path:
        """A folder of files derived from the index (`ann`, `thumbs`): in the index, or for an index on object
        storage in the local cache dir, one folder per URI."""
        if not self.remote:
            return Path(self.root) / name
        slug = hashlib.blake2b(str(self.root).encode(), digest_size=8).hexdigest()
        return cache_dir() / name / slug

    @staticmethod
    def exists(root: Path | str, storage_options: dict[str, str] | None = None) -> bool:
        if is_remote(root):
            table = _open_remote_items(str(root), storage_options)
            return table is not None and _META_KEY in (table.schema.metadata or {})
        return (Path(root) / META_FILE).is_file()

    @classmethod
    def create(
        cls, root: Path | str, *, encoder_spec: str, dim: int, storage_options: dict[str, str] | None = None
    ) -> Store:
        """A new, empty index at `root`. Hold the index's write lock (`index/lock.py`): a local table left by a
        create that crashed before `retrv.json` was written is dropped here, which would drop another writer's.
        On object storage, where there is no lock, the table is created with Lance's conditional commit: of two
        creates, the second fails and says so."""
        root = root if is_remote(root) else Path(root).expanduser().resolve()
        if cls.exists(root, storage_options):
            raise RetrvError(f"an index already exists at {root}; open it, or choose another --index")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        meta = IndexMeta(
            SCHEMA_VERSION,
            encoder_spec,
            int(dim),
            _retrv_version(),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        meta_text = json.dumps(asdict(meta), indent=2) + "\n"
        schema = items_schema(meta.dim).with_metadata({_META_KEY: meta_text.encode()})
        store = cls(root, meta, None, None, storage_options)
        if store.remote:
            store._db = _connect(root, storage_options)
            try:
                store._table = store._db.create_table(ITEMS, schema=schema, mode="create")
            except (ValueError, OSError, RuntimeError) as e:
                raise RetrvError(
                    f"could not create an index at {root}: another writer created it meanwhile, or the object "
                    f"store refused ({' '.join(str(e).split())[:200]}); run again to add to it"
                ) from None
            return store
        local = Path(root)
        local.mkdir(parents=True, exist_ok=True)
        store._db = _connect(root, None)
        if ITEMS in store._db.list_tables(limit=None).tables:  # left by a create that crashed before retrv.json
            store._db.drop_table(ITEMS)
        store._table = store._db.create_table(ITEMS, schema=schema)
        _write_meta(local, meta)  # retrv.json last: its presence means the index is complete
        return store

    @classmethod
    def open(cls, root: Path | str, storage_options: dict[str, str] | None = None) -> Store:
        root = root if is_remote(root) else Path(root).expanduser().resolve()
        meta = read_meta(root, storage_options)
        store = cls(root, meta, None, None, storage_options)
        store._db = _connect(root, storage_options)
        store._table = store._open_items()
        return store

    @lance_errors
    def _open_items(self) -> Any:
        return self._db.open_table(ITEMS)

    @lance_errors
    def refresh(self) -> int:
        """Move to the latest committed version (writes by other processes become visible)."""
        with self.version_lock:
            self._table.checkout_latest()
            return self.version()

    def version(self) -> int:
        return int(self._table.version)

    @lance_errors
    def checkout(self, version: int) -> None:
        """Read version `version` (until `refresh`)."""
        with self.version_lock:
            self._table.checkout(version)

    @lance_errors
    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, vectors) of rows [start, stop) in the order `iter_vectors` reads them (for shards built apart)."""
        query = self._table.search().select(["key", "vector"]).offset(start).limit(stop - start)
        table = query.to_arrow()
        return table.column("key").to_numpy(), _fixed_list_to_numpy(table.column("vector"))

    def identity(self, version: int | None = None) -> str:
        """What tells version `version` (default: the current one) of this table from a version of the same
        number of another table at the same place (the index re-created, or rolled back and written again).
        Caches of derived data (the faiss index) are keyed by it. '' when that version is gone.

        Locally: the version and its manifest file's inode, size and modification time (a stat: every search
        asks). On object storage, where there are no inodes: the version and the time Lance committed it, read
        from its manifest (the current version's is already loaded)."""
        v = self.version() if version is None else version
        if self.remote:
            try:
                dataset = self._table.to_lance()
                if dataset.version != v:
                    dataset = dataset.checkout_version(v)
                return f"{v}:{dataset.get_version()['timestamp'].isoformat()}"
            except (OSError, RuntimeError, ValueError):
                return ""
        folder = Path(self.root) / "lance" / f"{ITEMS}.lance" / "_versions"
        for name in (f"{2**64 - 1 - v}.manifest", f"{v}.manifest"):  # Lance's v2 and v1 manifest names
            try:
                st = os.stat(folder / name)
            except OSError:
                continue
            return f"{v}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        return ""

    # ---- items -----------------------------------------------------------------------------

    @lance_errors
    def upsert(self, items: Sequence[Item], vectors: np.ndarray) -> int:
        """Insert or replace (by id) `items` with their vectors, as ONE new version; returns it."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(items), self.meta.dim):
            raise ValueError(f"expected vectors of shape ({len(items)}, {self.meta.dim}), got {vectors.shape}")
        if not len(items):
            return self.version()
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        last = {item.id: i for i, item in enumerate(items)}  # a repeated id: the last one wins
        if len(last) < len(items):
            keep = sorted(last.values())
            items, vectors = [items[i] for i in keep], vectors[keep]
        self._table.checkout_latest()
        self._add_missing_columns()
        written = self.version() + 1
        data = self._items_arrow(items, vectors, written)
        keys = data.column("key").to_numpy()
        if self.count() == 0 or not np.isin(keys, self.keys()).any():
            self._table.add(data)  # plain append: ~3x faster than a merge when every id is new
        else:
            self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        return self.version()

    @lance_errors
    def delete(self, ids: Iterable[str]) -> int:
        """Delete rows by id as ONE new version (none if nothing to delete); returns the version."""
        keys = sorted({key_for_id(i) for i in ids})
        if keys:
            self._table.checkout_latest()
            where = f"key IN ({', '.join(map(str, keys))})"
            if self._table.count_rows(where):
                self._table.delete(where)
        return self.version()

    @lance_errors
    def get(self, ids: Sequence[str]) -> list[Item]:
        """Items by id, in the order asked; unknown ids are skipped."""
        by_id = {item.id: item for item in self._items_where("id", list(dict.fromkeys(ids)))}
        return [by_id[i] for i in ids if i in by_id]

    @lance_errors
    def items_for_keys(self, keys: Sequence[int]) -> list[Item | None]:
        """Items by faiss key, aligned with `keys` (None for -1 padding or a key no longer stored)."""
        wanted = [int(k) for k in dict.fromkeys(int(k) for k in keys) if k != -1]
        by_key = {key_for_id(item.id): item for item in self._items_where("key", wanted)}
        return [by_key.get(int(k)) for k in keys]

    @lance_errors
    def file_states(self) -> dict[str, FileState]:
        """source -> what an incremental build needs to decide whether to re-encode it."""
        t = self._scan(["source", "id", "mtime", "size", "content_hash"])
        cols = [t.column(c).to_pylist() for c in ("source", "id", "mtime", "size", "content_hash")]
        return {src: FileState(i, m, s, h) for src, i, m, s, h in zip(*cols)}

    @lance_errors
    def texts(self, ids: Sequence[str]) -> dict[str, str | None]:
        """id -> stored text, for the ids that have a row."""
        found: dict[str, str | None] = {}
        for where in _in_filters("id", list(dict.fromkeys(ids))):
            t = self._scan(["id", "text"], where)
            found.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True))
        return found

    @lance_errors
    def vectors_for_hashes(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """content hash -> a stored vector with that hash (to reuse for renamed or duplicated files)."""
        wanted = sorted({h for h in hashes if h})
        found: dict[str, np.ndarray] = {}
        for where in _in_filters("content_hash", wanted):
            t = self._scan(["content_hash", "vector"], where)
            vectors = _fixed_list_to_numpy(t.column("vector"))
            for h, v in zip(t.column("content_hash").to_pylist(), vectors):
                found.setdefault(h, v.copy())
        return found

    @lance_errors
    def vectors_for_ids(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of `ids`, aligned with them (n, dim); KeyError for an id with no row."""
        found: dict[str, np.ndarray] = {}
        for where in _in_filters("id", list(dict.fromkeys(ids))):
            t = self._scan(["id", "vector"], where)
            found.update(zip(t.column("id").to_pylist(), _fixed_list_to_numpy(t.column("vector")), strict=True))
        if not ids:
            return np.zeros((0, self.meta.dim), np.float32)
        return np.stack([found[i] for i in ids])

    @lance_errors
    def keys(self, where: str | None = None) -> np.ndarray:
        """The faiss keys of every row, or of the rows matching the SQL predicate `where`."""
        return self._scan(["key"], where).column("key").to_numpy()

    @property
    def date_column(self) -> str:
        """What a date filter reads: `date`, or `mtime` in a schema-1 index (see `has_dates`)."""
        return "date" if self.has_dates else "mtime"

    @lance_errors
    def iter_vectors(
        self, where: str | None = None, batch_size: int = 65_536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys int64, vectors float32 (n, dim)) in batches, without materialising the whole table."""
        query = self._table.search().select(["key", "vector"])
        if where:
            query = query.where(where)
        for batch in query.limit(None).to_batches(batch_size):
            if batch.num_rows:
                yield (batch.column("key").to_numpy(zero_copy_only=False), _fixed_list_to_numpy(batch.column("vector")))

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, vector) of the current version: keys int64 (n,), vectors float32 (n, dim)."""
        parts = list(self.iter_vectors())
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.meta.dim), np.float32)
        return np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts])

    def written_since(self, version: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, vectors) of rows inserted or replaced after `version` (what an ANN cache must add)."""
        return self.iter_vectors(where=f"written > {int(version)}")

    @lance_errors
    def count(self, where: str | None = None) -> int:
        """Rows of the items table (those matching the SQL predicate `where`)."""
        return int(self._table.count_rows(where))

    @lance_errors
    def compact(self, keep_versions_newer_than: Any) -> None:
        """Compact the data files of every table and delete versions older than `keep_versions_newer_than`
        (a timedelta); one new version, rows unchanged. Hold the write lock."""
        import warnings

        self._table.checkout_latest()
        with warnings.catch_warnings():  # "removes every version but the latest": what compaction is asked for
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than")
            self._table.optimize(cleanup_older_than=keep_versions_newer_than)
            for name in self.side_tables():
                self._db.open_table(name).optimize(cleanup_older_than=keep_versions_newer_than)

    @lance_errors
    def scan_all(self, columns: list[str] | None = None) -> pa.Table:
        """Every row of the items table (the columns asked for, else all) as one Arrow table."""
        query = self._table.search()
        if columns:
            query = query.select(columns)
        return query.limit(None).to_arrow()

    @lance_errors
    def iter_rows(self, columns: list[str] | None = None, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        """The items table in record batches, without materialising it."""
        query = self._table.search()
        if columns:
            query = query.select(columns)
        yield from query.limit(None).to_batches(batch_size)

    @lance_errors
    def counts_by_modality(self) -> dict[str, int]:
        import pyarrow.compute as pc

        counts = pc.value_counts(self._scan(["modality"]).column("modality")).to_pylist()
        return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: str(c["values"]))}

    @lance_errors
    def size_on_disk(self) -> int:
        """Bytes of the index: every file under a local root; on object storage, the files of the current
        version of `items` (what Lance's manifest counts)."""
        if self.remote:
            return int(self._table.to_lance().get_version()["metadata"].get("total_files_size", 0))
        return sum(p.stat().st_size for p in Path(self.root).rglob("*") if p.is_file())

    # ---- side tables (precomputed reasoner data, e.g. icm_<reasoner-id>) --------------------

    def side_tables(self) -> list[str]:
        return sorted(n for n in self._table_names() if n != ITEMS)

    @lance_errors
    def side_upsert(self, name: str, ids: Sequence[str], columns: dict[str, np.ndarray]) -> None:
        """Insert or replace rows of side table `name`: each column is an array (len(ids), *shape)."""
        import pyarrow as pa

        _check_side_name(name)
        if not columns or "id" in columns:
            raise ValueError("side_upsert needs at least one column, and none may be called 'id'")
        if len(set(ids)) < len(ids):
            raise ValueError("side_upsert got repeated ids")
        fields, arrays = [pa.field("id", pa.string(), nullable=False)], [pa.array(list(ids), pa.string())]
        for col, values in columns.items():
            values = np.ascontiguousarray(values)
            if values.shape[:1] != (len(ids),):
                raise ValueError(f"column {col!r} has {values.shape[:1]} rows, expected {len(ids)}")
            shape = values.shape[1:]
            flat = values.reshape(len(ids), -1) if len(ids) else values.reshape(0, int(np.prod(shape, dtype=int)))
            size = flat.shape[1]
            kind = pa.list_(pa.from_numpy_dtype(values.dtype), size)
            fields.append(pa.field(col, kind, metadata={_SHAPE_KEY: json.dumps(list(shape)).encode()}))
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), size))
        data = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        if name not in self._table_names():
            self._db.create_table(name, data=data)
            return
        table = self._db.open_table(name)
        existing = table.schema
        if [(f.name, f.type, f.metadata) for f in existing] != [(f.name, f.type, f.metadata) for f in data.schema]:
            raise ValueError(f"side table {name!r} holds columns {_describe(existing)}, got {_describe(data.schema)}")
        if not len(ids):
            return
        if table.count_rows() == 0 or not (set(ids) & self.side_ids(name)):
            table.add(data)
        else:
            table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    @lance_errors
    def side_get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """id -> {column: array of the stored shape and dtype}; ids not in the table are left out."""
        _check_side_name(name)
        if name not in self._table_names():
            return {}
        table = self._db.open_table(name)
        shapes = {f.name: tuple(json.loads(f.metadata[_SHAPE_KEY])) for f in table.schema if f.name != "id"}
        out: dict[str, dict[str, np.ndarray]] = {}
        for where in _in_filters("id", list(dict.fromkeys(ids))):
            t = table.search().where(where).limit(None).to_arrow()
            cols = {c: _fixed_list_to_numpy(t.column(c)) for c in shapes}
            for row, row_id in enumerate(t.column("id").to_pylist()):
                out[row_id] = {c: cols[c][row].reshape(shapes[c]).copy() for c in shapes}
        return out

    @lance_errors
    def side_columns(self, name: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """column -> (shape, dtype) of one row of side table `name` (empty when there is no such table)."""
        _check_side_name(name)
        if name not in self._table_names():
            return {}
        schema = self._db.open_table(name).schema
        return {
            f.name: (tuple(json.loads(f.metadata[_SHAPE_KEY])), np.dtype(f.type.value_type.to_pandas_dtype()))
            for f in schema
            if f.name != "id"
        }

    @lance_errors
    def side_ids(self, name: str) -> set[str]:
        _check_side_name(name)
        if name not in self._table_names():
            return set()
        table = self._db.open_table(name)
        return set(table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist())

    @lance_errors
    def side_delete(self, name: str, ids: Iterable[str]) -> None:
        """Delete rows of side table `name` by id (one new version of that table; none if nothing matches)."""
        _check_side_name(name)
        wanted = sorted(set(ids))
        if not wanted or name not in self._table_names():
            return
        table = self._db.open_table(name)
        where = f"id IN ({', '.join(map(sql_quote, wanted))})"
        if table.count_rows(where):
            table.delete(where)

    @lance_errors
    def side_drop(self, name: str) -> None:
        _check_side_name(name)
        if name in self._table_names():
            self._db.drop_table(name)

    # ---- internals -------------------------------------------------------------------------

    @lance_errors
    def _table_names(self) -> list[str]:
        return list(self._db.list_tables(limit=None).tables)

    def _scan(self, columns: list[str], where: str | None = None) -> pa.Table:
        query = self._table.search().select(columns)
        if where:
            query = query.where(where)
        return query.limit(None).to_arrow()

    def _items_where(self, column: str, values: list[Any]) -> list[Item]:
        items: list[Item] = []
        for where in _in_filters(column, values):
            items.extend(self._items(where))
        return items

    def _items(self, where: str | None) -> list[Item]:
        columns = [c for c in ITEM_COLUMNS if c != "date" or self.has_dates]
        t = self._scan(columns, where)
        rows = [dict(zip(columns, row, strict=True)) for row in zip(*(t.column(c).to_pylist() for c in columns))]
        return [Item(**row) if "date" in row else Item(**row, date=row["mtime"]) for row in rows]

    @property
    def has_dates(self) -> bool:
        """Whether the items table has the `date` column (schema 2); before that, an item's date is its mtime."""
        return "date" in self._table.schema.names

    def _add_missing_columns(self) -> None:
        """Bring a schema-1 table to schema 2 (its dates are its mtimes), and say so in retrv.json."""
        if self.has_dates:
            return
        self._table.add_columns({"date": "mtime"})
        self.meta = IndexMeta(**{**asdict(self.meta), "schema_version": SCHEMA_VERSION})
        if not self.remote:  # an index on object storage was made with schema 2 or later: none gets here
            _write_meta(Path(self.root), self.meta)

    def _items_arrow(self, items: Sequence[Item], vectors: np.ndarray, written: int) -> pa.Table:
        import pyarrow as pa

        n, dim = vectors.shape
        columns = {
            "id": pa.array([it.id for it in items], pa.string()),
            "key": pa.array([key_for_id(it.id) for it in items], pa.int64()),
            "source": pa.array([it.source for it in items], pa.string()),
            "modality": pa.array([it.modality for it in items], pa.string()),
            "text": pa.array([it.text for it in items], pa.string()),
            "image_path": pa.array([it.image_path for it in items], pa.string()),
            "mtime": pa.array([float(it.mtime) for it in items], pa.float64()),
            "size": pa.array([int(it.size) for it in items], pa.int64()),
            "content_hash": pa.array([it.content_hash for it in items], pa.string()),
            "date": pa.array([float(it.date) for it in items], pa.float64()),
            "written": pa.array(np.full(n, written, np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        }
        return pa.Table.from_pydict(columns, schema=items_schema(dim))


def items_schema(dim: int) -> pa.Schema:
    """`written` is the table version a row was (re)written in: the ANN cache adds rows newer than itself."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("key", pa.int64(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("text", pa.string()),
            pa.field("image_path", pa.string()),
            pa.field("mtime", pa.float64()),
            pa.field("size", pa.int64()),
            pa.field("content_hash", pa.string()),
            pa.field("date", pa.float64()),
            pa.field("written", pa.int64()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def _check_side_name(name: str) -> None:
    if name == ITEMS or not _SIDE_NAME.match(name):
        raise ValueError(f"invalid side table name {name!r}: use letters, digits, '_', '-', '.' (not 'items')")


def _describe(schema: pa.Schema) -> str:
    parts = []
    for f in schema:
        if f.name != "id":
            shape = json.loads((f.metadata or {}).get(_SHAPE_KEY, b"[]"))
            parts.append(f"{f.name}:{f.type.value_type}{shape}")
    return ", ".join(parts)
