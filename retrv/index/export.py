"""`retrv export`: an index's items and vectors for other tools, streamed in batches (never the whole index
in memory).

Formats:
- `parquet`: one file; the item columns (id, key, source, modality, text, image_path, mtime, size,
  content_hash, date) and `vector` (a fixed-size list of float32), plus with `precomputed` the side table's columns
  (fixed-size lists, their shape in the field metadata under `retrv.shape`).
- `npy`: a folder: `vectors.npy` (n x dim float32, row i is line i of `items.jsonl`), `items.jsonl` (the
  item columns), and with `precomputed` one `<table>.<column>.npy` per column (n x shape).
- `jsonl`: one JSON object per item: the item columns, `vector`, and the precomputed columns as nested lists.
Rows come in the table's order; an item without a precomputed row gets zeros there (and `has_<table>` false).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from retrv.errors import UsageError
from retrv.progress import ProgressCallback, emit

if TYPE_CHECKING:
    from retrv.index.store import Store

FORMATS = ("parquet", "npy", "jsonl")
ITEM_FIELDS = ("id", "key", "source", "modality", "text", "image_path", "mtime", "size", "content_hash", "date")


@dataclass
class ExportReport:
    out: str
    format: str
    items: int = 0
    dim: int = 0
    precomputed: str | None = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def export_index(
    store: Store,
    out: str | Path,
    fmt: str,
    *,
    precomputed: str | None = None,
    batch_size: int = 8192,
    progress: ProgressCallback | None = None,
) -> ExportReport:
    """Write the items of `store` to `out` in `fmt` (the module doc); UsageError for a bad format, an existing
    `out`, or a precomputed table the index does not hold."""
    started = time.perf_counter()
    out = Path(out).expanduser().absolute()
    if fmt not in FORMATS:
        raise UsageError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists():
        raise UsageError(f"{out} exists; export writes a new file or folder")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: there is no folder {out.parent}")
    if precomputed is not None and precomputed not in store.side_tables():
        held = ", ".join(store.side_tables()) or "none"
        raise UsageError(f"index {store.root} holds no table {precomputed!r} (its tables: {held})")
    total = store.count()
    report = ExportReport(str(out), fmt, dim=store.meta.dim, precomputed=precomputed)
    writers: dict[str, type[_Writer]] = {"parquet": _ParquetWriter, "npy": _NpyWriter, "jsonl": _JsonlWriter}
    partial = out.with_name(out.name + ".partial")  # renamed to `out` when complete: no half export under its name
    _remove(partial)
    writer = writers[fmt](partial, total, store.meta.dim)
    try:
        fields = [name for name in ITEM_FIELDS if name != "date" or store.has_dates]
        for batch in store.iter_rows([*fields, "vector"], batch_size=batch_size):
            items = pa.Table.from_batches([batch]).select(fields)
            if "date" not in fields:  # an index from before dates: its dates are the mtimes
                items = items.append_column("date", items.column("mtime"))
            vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(-1, store.meta.dim)
            ids = items.column("id").to_pylist()
            extra = _precomputed_rows(store, precomputed, ids) if precomputed else {}
            writer.write(items, vectors.astype(np.float32, copy=False), extra)
            report.items += len(vectors)
            emit(progress, "export", report.items, total)
        writer.close()
    except BaseException:
        writer.close()
        _remove(partial)
        raise
    partial.rename(out)
    report.files = [str(out)] if out.is_file() else [str(p) for p in sorted(out.iterdir())]
    report.seconds = time.perf_counter() - started
    return report


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _precomputed_rows(store: Store, table: str, ids: list[str]) -> dict[str, np.ndarray]:
    """`<table>.<column>` -> (len(ids), *shape) array of `table`'s rows for `ids` (zeros where an id has none),
    and `has_<table>` (bool per id)."""
    rows = store.side_get(table, ids)
    columns = {name: np.zeros((len(ids), *shape), dtype) for name, (shape, dtype) in store.side_columns(table).items()}
    for i, item_id in enumerate(ids):
        for name, value in rows.get(item_id, {}).items():
            columns[name][i] = value
    exported = {f"{table}.{name}": value for name, value in columns.items()}
    exported[f"has_{table}"] = np.array([i in rows for i in ids], bool)
    return exported


class _Writer(Protocol):
    def __init__(self, out: Path, total: int, dim: int) -> None: ...

    def write(self, items: pa.Table, vectors: np.ndarray, extra: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


class _ParquetWriter:
    def __init__(self, out: Path, total: int, dim: int) -> None:
        self.out, self.dim = out, dim
        self.writer: Any = None  # a pyarrow.parquet.ParquetWriter once the first batch gives the schema

    def write(self, items: pa.Table, vectors: np.ndarray, extra: dict[str, np.ndarray]) -> None:
        import pyarrow.parquet as pq

        table = items.append_column("vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dim))
        for name, values in extra.items():
            if values.ndim == 1:
                table = table.append_column(name, pa.array(values))
                continue
            size = int(np.prod(values.shape[1:]))
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(len(values), -1).ravel()), size)
            shape = json.dumps(list(values.shape[1:])).encode()
            table = table.append_column(pa.field(name, column.type, metadata={b"retrv.shape": shape}), column)
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.out), table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        elif not self.out.exists():
            self.out.touch()  # an empty index: an empty file rather than none


class _NpyWriter:
    def __init__(self, out: Path, total: int, dim: int) -> None:
        out.mkdir()
        self.out, self.total, self.done = out, total, 0
        self.vectors = np.lib.format.open_memmap(out / "vectors.npy", mode="w+", dtype=np.float32, shape=(total, dim))
        self.items = open(out / "items.jsonl", "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.extra: dict[str, np.memmap] = {}

    def write(self, items: pa.Table, vectors: np.ndarray, extra: dict[str, np.ndarray]) -> None:
        n = len(vectors)
        self.vectors[self.done : self.done + n] = vectors
        for name, values in extra.items():
            if name not in self.extra:
                self.extra[name] = np.lib.format.open_memmap(
                    self.out / f"{name}.npy", mode="w+", dtype=values.dtype, shape=(self.total, *values.shape[1:])
                )
            self.extra[name][self.done : self.done + n] = values
        for row in items.to_pylist():
            self.items.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.done += n

    def close(self) -> None:
        self.items.close()
        for array in (self.vectors, *self.extra.values()):
            array.flush()


class _JsonlWriter:
    def __init__(self, out: Path, total: int, dim: int) -> None:
        self.file = open(out, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, items: pa.Table, vectors: np.ndarray, extra: dict[str, np.ndarray]) -> None:
        for i, row in enumerate(items.to_pylist()):
            row["vector"] = vectors[i].tolist()
            row.update({name: values[i].tolist() for name, values in extra.items()})
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.file.close()
