"""The values that flow through retrv: what is indexed, what is asked, what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Modality = Literal["text", "image", "image,text"]
MODALITIES: tuple[str, ...] = ("text", "image", "image,text")


def modality_of(has_text: bool, has_image: bool) -> Modality:
    if has_image and has_text:
        return "image,text"
    if has_image:
        return "image"
    if has_text:
        return "text"
    raise ValueError("an item or query needs text, an image, or both")


@dataclass(frozen=True)
class Item:
    """One retrievable thing: a file on disk or a candidate of a dataset pool.

    `id` is stable (a hash of the absolute path, or the dataset's did); `source` is what a
    person recognises (the path, or the did); `image_path` is where the pixels are, if any.
    """

    id: str
    source: str
    modality: Modality
    text: str | None = None
    image_path: str | None = None
    mtime: float = 0.0
    size: int = 0
    content_hash: str = ""


@dataclass
class Query:
    """Text, an image, or both; `add`/`subtract` compose further queries into the vector (rclip)."""

    text: str | None = None
    image: str | Path | None = None
    add: list[Query] = field(default_factory=list)
    subtract: list[Query] = field(default_factory=list)
    instruction: str | None = None

    def __post_init__(self) -> None:
        if self.image is not None:
            self.image = str(self.image)
        if not self.text and self.image is None:
            raise ValueError("a query needs text, an image, or both")

    @property
    def modality(self) -> Modality:
        return modality_of(bool(self.text), self.image is not None)

    def describe(self) -> str:
        parts = [repr(self.text)] if self.text else []
        if self.image is not None:
            parts.append(f"image {self.image}")
        desc = " + ".join(parts)
        desc += "".join(f" + ({q.describe()})" for q in self.add)
        desc += "".join(f" - ({q.describe()})" for q in self.subtract)
        return desc


@dataclass
class Hit:
    """One ranked result. `score` orders the ranking; the stage scores say where it came from."""

    rank: int
    id: str
    source: str
    modality: Modality
    score: float
    coarse_score: float
    rerank_score: float | None = None
    confidence: float | None = None
    text: str | None = None
    image_path: str | None = None
    chosen: bool = False
    inspected: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "source": self.source,
            "modality": self.modality,
            "score": self.score,
            "coarse_score": self.coarse_score,
            "rerank_score": self.rerank_score,
            "confidence": self.confidence,
            "text": self.text,
            "image_path": self.image_path,
            "chosen": self.chosen,
            "inspected": self.inspected,
        }


@dataclass
class Ranking:
    """The answer to one query: ordered hits plus what the engine did to produce them.

    `no_match` is True when a `min_score` was asked for and no candidate reached it.
    `fallback` names why a reranker's output was not used (malformed output), else None.
    `forced_answer` is True when the reasoner stopped without a usable answer and was made to name a candidate.
    `latency_ms` is per stage ("encode", "coarse", "fetch", "rerank", "total").
    """

    query: Query
    hits: list[Hit]
    rerank: str = "none"
    no_match: bool = False
    reasoning: str | None = None
    inspected: list[int] = field(default_factory=list)
    fallback: str | None = None
    forced_answer: bool = False
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": {
                "text": self.query.text,
                "image": self.query.image,
                "modality": self.query.modality,
                "add": [q.describe() for q in self.query.add],
                "subtract": [q.describe() for q in self.query.subtract],
            },
            "rerank": self.rerank,
            "no_match": self.no_match,
            "hits": [h.to_dict() for h in self.hits],
            "reasoning": self.reasoning,
            "inspected": list(self.inspected),
            "fallback": self.fallback,
            "forced_answer": self.forced_answer,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "latency_ms": dict(self.latency_ms),
        }
