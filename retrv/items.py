"""The values that flow through retrv: what is indexed, what is asked, what comes back."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL_NAMES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def valid_utf8(text: str) -> str:
    r"""`text` with the bytes of a file name that is not UTF-8 (Python's surrogate escapes) as `\xNN`."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return raw.decode("utf-8", "backslashreplace")


def display_text(text: str) -> str:
    r"""`text` safe to print on one line of a terminal or a pipe: non-UTF-8 bytes as `\xNN`, control
    characters (newline, tab, ESC, ...) as `\n`, `\t`, `\x1b`. A backslash itself is left as it is."""
    return _CONTROL.sub(lambda m: _CONTROL_NAMES.get(m.group(), f"\\x{ord(m.group()):02x}"), valid_utf8(text))


def json_text(data: Any, *, indent: int | None = 2) -> str:
    r"""JSON that is valid UTF-8 whatever the data: the bytes of a file name that is not UTF-8 (Python's
    surrogate escapes) are written as JSON escapes (`\udcff`), which decode back to the same name."""
    import json

    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def file_item_id(path: str) -> str:
    """The stable id of a file's item: blake2b-128 of its absolute path, in hex."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Item:
    """One retrievable thing: a file on disk or a candidate of a dataset pool.

    `id` is stable (`file_item_id` of the absolute path, or the dataset's did); `source` is what a
    person recognises (the path, or the did); `image_path` is where the pixels are, if any.
    `content_hash` is blake2b-128 of the item's bytes (the file's, the text's, or both; `index/build.py`):
    equal hashes mean equal content, whatever the path. `date` (seconds since the epoch) is when the item was
    made: a photo's EXIF capture time when its file records one, else the file's modification time.
    """

    id: str
    source: str
    modality: Modality
    text: str | None = None
    image_path: str | None = None
    mtime: float = 0.0
    size: int = 0
    content_hash: str = ""
    date: float = 0.0


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


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def parse_query(
    text: str | None,
    image: str | Path | None = None,
    *,
    add: list[str] = (),  # type: ignore[assignment]
    subtract: list[str] = (),  # type: ignore[assignment]
    warn: Callable[[str], None] | None = None,
) -> Query:
    """A query as a person types it: words, or the path of an image, plus an optional `image` and
    `add`/`subtract` terms (each an image path or words). Something that looks like an image path but is no
    file is searched as words, and `warn` says so."""
    from retrv.errors import RetrvError, UsageError

    if not text and image is None:
        raise UsageError("give a QUERY (words or an image path) or --image PATH")
    if image is not None and not Path(image).expanduser().is_file():
        raise RetrvError(f"query image not found: {image}")

    def term(value: str) -> Query:
        if _is_image_path(value):
            return Query(image=str(Path(value).expanduser().absolute()))
        if _looks_like_image_path(value) and warn is not None:
            warn(f"{value!r} looks like an image path, but there is no such file; searching it as words")
        return Query(text=value)

    if image is not None:
        image = Path(image).expanduser().absolute()
    main = term(text) if text and image is None else Query(text=text or None, image=image)
    main.add, main.subtract = [term(v) for v in add], [term(v) for v in subtract]
    return main


def _looks_like_image_path(text: str) -> bool:
    return Path(text.strip()).suffix.lower() in IMAGE_SUFFIXES and len(text.split()) == 1


def _is_image_path(text: str) -> bool:
    return _looks_like_image_path(text) and Path(text).expanduser().is_file()


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
    copies: list[str] = field(default_factory=list)  # sources of the duplicates folded into this hit

    @classmethod
    def from_item(
        cls, item: Item, coarse_score: float, *, rank: int = 0, score: float | None = None, **extra: Any
    ) -> Hit:
        """A hit for a stored item; `score` (what the order follows) defaults to the coarse score."""
        return cls(
            rank=rank,
            id=item.id,
            source=item.source,
            modality=item.modality,
            score=coarse_score if score is None else score,
            coarse_score=coarse_score,
            text=item.text,
            image_path=item.image_path,
            **extra,
        )

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
            "copies": list(self.copies),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hit:
        """The hit `to_dict` wrote (fields added by a later schema are ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass
class Ranking:
    """The answer to one query: ordered hits plus what the engine did to produce them.

    `no_match` is True when a `min_score` was asked for and no candidate reached it.
    `fallback` names why a reranker's output was not used (malformed output), else None.
    `forced_answer` is True when the reasoner stopped without a usable answer and was made to name a candidate.
    `candidate_tokens` says how reason mode showed the candidates (icm, glance, full); None in other modes.
    `reranked` is how many of the top hits stage 2 ordered; the hits after them (k above the reranked depth)
    follow in coarse order, with coarse scores.
    `filters` is what the search kept and folded: under, since, until, modality, all_copies, dedup.
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
    candidate_tokens: str | None = None
    reranked: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    filters: dict[str, Any] = field(default_factory=dict)

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
            "candidate_tokens": self.candidate_tokens,
            "reranked": self.reranked,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "latency_ms": dict(self.latency_ms),
            "filters": dict(self.filters),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], query: Query) -> Ranking:
        """The ranking `to_dict` wrote, for `query` (the document describes its query; it does not hold it)."""
        return cls(
            query=query,
            hits=[Hit.from_dict(h) for h in data["hits"]],
            rerank=data["rerank"],
            no_match=data["no_match"],
            reasoning=data["reasoning"],
            inspected=list(data["inspected"]),
            fallback=data["fallback"],
            forced_answer=data["forced_answer"],
            candidate_tokens=data.get("candidate_tokens"),
            reranked=int(data.get("reranked", 0)),
            prompt_tokens=data["prompt_tokens"],
            generated_tokens=data["generated_tokens"],
            latency_ms=dict(data["latency_ms"]),
            filters=dict(data.get("filters") or {}),
        )
