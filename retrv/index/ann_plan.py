"""Which faiss index fits a memory budget (like autofaiss's `max_index_memory_usage`), and what it will cost.

Without a budget the kind follows the size: exact (flat) up to `exact_max` vectors, then `AnnParams.large`
(HNSW, or IVF). With a budget (`--ann-memory 4GiB`), the first of these whose expected memory fits is chosen:

1. flat, when n <= exact_max (exact, no build), and whatever the budget below `PQ_MIN_ROWS` vectors (too few
   to train PQ codebooks on);
2. `AnnParams.large` (HNSW or IVF-flat: full vectors in RAM, recall about 1 on real embeddings);
3. IVF-PQ with the most bytes per vector that fit (m sub-quantizers of 8 bits, m dividing the dimension), with an
   OPQ rotation when each code byte stands for 8 or more dimensions (there the rotation spreads the variance
   evenly over the sub-vectors, which plain PQ's contiguous split does not); its results are re-ranked exactly
   with the stored vectors (`retrv.index.refine`: a memory-mapped file, not counted in the budget);
4. when even the smallest IVF-PQ does not fit, the same with the inverted lists memory-mapped from disk (faiss's
   on-disk inverted lists): RAM then holds only the centroids, the rotation and the key of each position;
5. when nothing fits (a budget below the centroids, or too few vectors for PQ), the plan with the least memory,
   marked `over_budget` (the index says so once it is built).

Expected memory counts what faiss holds (codes, ids, centroids, graph links) and retrv's per-position arrays
(key and dead flag: 9 bytes). The estimates are checked against measured sizes in tests/index/test_ann_budget.py
and docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLAT, HNSW, IVF, IVFPQ = "flat", "hnsw", "ivf", "ivfpq"
PER_POSITION = 9  # retrv's labels (int64) and dead flags (bool) per faiss position
PQ_M_CHOICES = (128, 96, 64, 48, 32, 24, 16, 8)  # bytes per vector, best first
OPQ_MIN_DIMS_PER_BYTE = 8
PQ_CENTROIDS = 256  # 8-bit codes
IVF_TRAIN_PER_LIST = 48  # training sample per list (faiss wants >= 39)
# Fewer vectors cannot train 256 centroids per sub-quantizer (faiss asks for 39 each, and trains, with a warning,
# from 4); flat is small there anyway (2 MB at 512-d).
PQ_MIN_ROWS = 4 * PQ_CENTROIDS


@dataclass(frozen=True)
class AnnPlan:
    """The kind chosen for n vectors of `dim`, its parameters and its expected resident memory in bytes."""

    kind: str
    n: int
    dim: int
    expected_bytes: int
    budget: int | None = None
    nlist: int = 0  # IVF kinds
    m: int = 0  # IVF-PQ: bytes per vector (sub-quantizers)
    opq: bool = False
    mmap: bool = False  # IVF-PQ inverted lists memory-mapped from disk

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.expected_bytes > self.budget

    def shortfall(self) -> str | None:
        """What to tell the user when nothing fits the budget (None when the plan fits)."""
        if self.budget is None or not self.over_budget:
            return None
        mib = 2**20
        chosen = self.factory + (" (lists on disk)" if self.mmap else "") if self.kind == IVFPQ else self.kind
        return (
            f"no ANN index of {self.n} vectors fits in the --ann-memory budget of {self.budget / mib:.2f} MiB; "
            f"using the smallest, {chosen}, at {self.expected_bytes / mib:.2f} MiB"
        )

    @property
    def factory(self) -> str:
        """The faiss index_factory string of an IVF-PQ plan."""
        rotation = f"OPQ{self.m}_{self.dim}," if self.opq else ""
        return f"{rotation}IVF{self.nlist},PQ{self.m}"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "expected_bytes": self.expected_bytes, "budget_bytes": self.budget}
        if self.kind in (IVF, IVFPQ):
            out["nlist"] = self.nlist
        if self.kind == IVFPQ:
            out.update(m=self.m, opq=self.opq, mmap=self.mmap, factory=self.factory)
        return out


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists, each with enough vectors to train on."""
    return max(1, min(int(n**0.5), n // IVF_TRAIN_PER_LIST))


def flat_bytes(n: int, dim: int) -> int:
    return n * (4 * dim + PER_POSITION)


def hnsw_bytes(n: int, dim: int, m: int) -> int:
    # Level 0 holds 2M links of 4 bytes per vector; the upper levels add about 1/M of that again.
    links = int(2 * m * 4 * (1 + 1 / m))
    return n * (4 * dim + links + 8 + PER_POSITION)


def ivf_bytes(n: int, dim: int, nlist: int) -> int:
    return n * (4 * dim + 8 + PER_POSITION) + nlist * dim * 4


def ivfpq_bytes(n: int, dim: int, nlist: int, m: int, opq: bool, mmap: bool = False) -> int:
    """Codes (m bytes) and ids (8) per vector unless memory-mapped, centroids, PQ tables, the OPQ matrix."""
    fixed = nlist * dim * 4 + PQ_CENTROIDS * dim * 4 + (dim * dim * 4 if opq else 0)
    return n * ((0 if mmap else m + 8) + PER_POSITION) + fixed


def plan_ann(n: int, dim: int, *, budget: int | None, exact_max: int, large: str = HNSW, hnsw_m: int = 32) -> AnnPlan:
    """The index for n vectors of `dim` under `budget` bytes (None: no budget; see the module doc)."""
    nlist = ivf_lists(n)
    if budget is None:
        if n <= exact_max:
            return AnnPlan(FLAT, n, dim, flat_bytes(n, dim))
        expected = hnsw_bytes(n, dim, hnsw_m) if large == HNSW else ivf_bytes(n, dim, nlist)
        return AnnPlan(large, n, dim, expected, nlist=nlist if large == IVF else 0)
    if (n <= exact_max and flat_bytes(n, dim) <= budget) or n < PQ_MIN_ROWS:
        return AnnPlan(FLAT, n, dim, flat_bytes(n, dim), budget)
    large_bytes = hnsw_bytes(n, dim, hnsw_m) if large == HNSW else ivf_bytes(n, dim, nlist)
    if large_bytes <= budget:
        return AnnPlan(large, n, dim, large_bytes, budget, nlist=nlist if large == IVF else 0)
    choices = [m for m in PQ_M_CHOICES if dim % m == 0 and m <= dim // 2] or [1]
    # Best first: in RAM by bytes per vector, then on disk with the smallest codes; each with the OPQ rotation
    # where it helps, then without it (its dim x dim matrix is what overflows a small index's budget).
    shapes = [(m, False) for m in choices] + [(choices[-1], True)]
    plans = [
        AnnPlan(IVFPQ, n, dim, ivfpq_bytes(n, dim, nlist, m, opq, mmap), budget, nlist=nlist, m=m, opq=opq, mmap=mmap)
        for m, mmap in shapes
        for opq in dict.fromkeys((dim // m >= OPQ_MIN_DIMS_PER_BYTE, False))
    ]
    fitting = [plan for plan in plans if plan.expected_bytes <= budget]
    # Nothing fits: the smallest there is (`over_budget` says so; the index tells the user).
    return fitting[0] if fitting else min(plans, key=lambda plan: plan.expected_bytes)
