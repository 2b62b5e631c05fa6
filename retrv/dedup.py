"""Copies in a ranking: items with the same content hash (a photo copied or saved twice), and optionally near
duplicates (vectors closer than a cosine threshold: a re-encoded or resized copy).

`collapse` keeps the best-ranked item of each group and lists the others as its copies; the order of what is
kept does not change. Items without a content hash are never copies of anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from retrv.items import Item


@dataclass
class Kept:
    item: Item
    score: float
    copies: list[Item] = field(default_factory=list)


def collapse(
    items: Sequence[Item],
    scores: Sequence[float],
    *,
    near: float | None = None,
    vectors: Callable[[list[Item]], np.ndarray] | None = None,
) -> list[Kept]:
    """Items (best first) with their copies folded into the first of each group. With `near`, an item whose
    cosine similarity to a kept item is at least `near` is its copy too; `vectors` gives the L2-normalised
    vectors of a list of items (fetched once for the whole list)."""
    import numpy as np

    kept: list[Kept] = []
    by_hash: dict[str, Kept] = {}
    matrix = vectors(list(items)) if near is not None and vectors is not None and items else None
    threshold = near if near is not None else 2.0  # above any cosine: nothing is near
    kept_rows: list[int] = []
    for row, (item, score) in enumerate(zip(items, scores, strict=True)):
        owner = by_hash.get(item.content_hash) if item.content_hash else None
        if owner is None and matrix is not None and kept_rows:
            similarity = matrix[kept_rows] @ matrix[row]
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                owner = kept[best]
        if owner is not None:
            owner.copies.append(item)
            continue
        kept.append(Kept(item, score))
        kept_rows.append(row)
        if item.content_hash:
            by_hash[item.content_hash] = kept[-1]
    return kept
