"""The exact re-rank of a compressed (IVF-PQ) index: full vectors by faiss position, memory-mapped from disk.

PQ codes rank the top few hundred candidates approximately; their stored float32 vectors, read from a file
beside the faiss index (one row per position, in the order they were added), give the exact inner products
that order the final top k. The file is memory-mapped, so it costs page cache, not the index's memory budget:
a query touches a few hundred rows. Rows added since the file was written (an incremental update) are held in
memory until the index is saved again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class RefineVectors:
    """Full vectors by position: a float32 file (memory-mapped) followed by rows appended in memory."""

    def __init__(self, dim: int, path: Path | None = None, *, writable: bool = False) -> None:
        self.dim = dim
        self.path = path
        self._writer = open(path, "wb") if writable and path is not None else None  # noqa: SIM115 - kept open
        self._mapped: np.ndarray | None = None
        self._mapped_rows = 0
        self._tail: list[np.ndarray] = []
        self._tail_rows = 0
        self._written = 0  # rows written to the file being built (readable after `finish`)

    @classmethod
    def open(cls, path: Path, dim: int) -> RefineVectors:
        vectors = cls(dim, path)
        vectors._map()
        return vectors

    def _file_rows(self) -> int:
        return os.path.getsize(self.path) // (4 * self.dim) if self.path is not None else 0

    def _map(self) -> None:
        rows = self._file_rows()
        if self.path is not None and rows and rows != self._mapped_rows:
            self._mapped = np.memmap(self.path, dtype=np.float32, mode="r", shape=(rows, self.dim))
            self._mapped_rows = rows

    def __len__(self) -> int:
        return self._mapped_rows + self._tail_rows + self._written

    def append(self, vectors: np.ndarray) -> None:
        """Rows for the next positions: written to the file while it is being built, else kept in memory."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._writer is not None:
            self._writer.write(vectors.tobytes())
            self._written += len(vectors)
            return
        self._tail.append(vectors)
        self._tail_rows += len(vectors)

    def finish(self) -> None:
        """Close the file being built and map it."""
        if self._writer is not None:
            self._writer.close()
            self._writer, self._written = None, 0
            self._map()

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at `positions` (any shape of non-negative ints): shape positions.shape + (dim,)."""
        flat = positions.reshape(-1)
        out = np.empty((len(flat), self.dim), np.float32)
        in_file = flat < self._mapped_rows
        if in_file.any():
            order = np.argsort(flat[in_file])  # sorted reads walk the file forwards
            picked = flat[in_file][order]
            rows = np.empty((len(picked), self.dim), np.float32)
            rows[order] = np.asarray(self._mapped[picked])  # type: ignore[index]
            out[in_file] = rows
        if (~in_file).any():
            tail = np.concatenate(self._tail) if len(self._tail) > 1 else self._tail[0]
            self._tail = [tail]
            out[~in_file] = tail[flat[~in_file] - self._mapped_rows]
        return out.reshape(*positions.shape, self.dim)

    def save(self, path: Path) -> None:
        """Write every row to `path` (a copy of the mapped file and the rows in memory) and map it from there."""
        with open(path, "wb") as f:
            for start in range(0, self._mapped_rows, 1 << 16):
                f.write(np.asarray(self._mapped[start : start + (1 << 16)]).tobytes())  # type: ignore[index]
            for part in self._tail:
                f.write(part.tobytes())
        self.path, self._mapped, self._mapped_rows, self._tail, self._tail_rows = path, None, 0, [], 0
        self._map()

    def adopt(self, path: Path) -> None:
        """The file was renamed to `path` (same content): map it from there."""
        self.path, self._mapped, self._mapped_rows = path, None, 0
        self._map()


def exact_rerank(
    queries: np.ndarray, candidates: np.ndarray, vectors: RefineVectors, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the top k of each query's `candidates` (positions, -1 padded) by exact inner
    product with the stored vectors, best first; -inf / -1 where fewer than k candidates were found."""
    found = candidates >= 0
    rows = vectors.rows(np.where(found, candidates, 0))
    scores = np.einsum("qcd,qd->qc", rows, queries)
    scores = np.where(found, scores, -np.inf).astype(np.float32)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), np.where(
        np.isfinite(np.take_along_axis(scores, top, axis=1)), np.take_along_axis(candidates, top, axis=1), -1
    )
