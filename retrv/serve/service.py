"""The warm engines behind `retrv serve`, and what one request may ask of them.

`SearchService.open` loads each encoder once (shared by the indexes built with it, behind a `BatchingEncoder`)
and the reranker once (shared by every index, behind a `ResolveQueue`), and opens one `Engine` per served index.
A request is a `SearchRequest`, read from the fields of a query string, a JSON body or a multipart form (the same
names everywhere; docs/cli.md) and checked against the `ServeLimits`. The query words are only ever words: the
server never opens a path a client sends; images come as uploads, written to a temporary file for the search.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import NotServedError, RequestLimitError, RequestTooLargeError, RetrvError, UsageError
from retrv.index.filters import SearchFilter
from retrv.items import Item, Query

if TYPE_CHECKING:
    from retrv.config import Settings
    from retrv.engine import Engine
    from retrv.serve.batching import BatchingEncoder, QueuedReranker

RERANK_NONE = "none"


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask; each limit crossed is a 4xx that names it."""

    max_upload_bytes: int = 20 * 2**20  # a whole request body
    max_query_chars: int = 2000  # each text: the query and every added or subtracted term
    max_terms: int = 16  # added plus subtracted terms
    max_k: int = 1000  # k and rerank_k
    request_seconds: float = 120.0  # reading the request and searching, queue waits included
    max_megapixels: float = 64.0  # an uploaded image, checked from its header before it is decoded
    reasoner_queue: int = 8  # requests waiting for the reasoner beyond the one it resolves

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Upload:
    """An image a client sent: its bytes, and the name it gave (shown as the query's image)."""

    name: str
    data: bytes


Term = str | Upload

FIELDS = (
    "q",
    "k",
    "index",
    "rerank",
    "rerank_k",
    "min_score",
    "image",
    "add",
    "subtract",
    "under",
    "since",
    "until",
    "modality",
    "all_copies",
    "dedup",
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass
class SearchRequest:
    q: str | None = None
    image: Upload | None = None
    add: list[Term] = field(default_factory=list)
    subtract: list[Term] = field(default_factory=list)
    k: int = 10
    index: str | None = None
    rerank: str | None = None  # None: the server's default
    rerank_k: int | None = None
    min_score: float | None = None
    where: SearchFilter | None = None  # under, since, until, modality
    all_copies: bool = False
    dedup: float | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, Sequence[Term]]) -> SearchRequest:
        """A request from named fields, each a list of values (a query string, a JSON body or a form alike)."""
        try:
            return cls._from_fields(fields)
        except UsageError as e:
            e.args = (as_field_names(str(e)),)
            raise

    @classmethod
    def _from_fields(cls, fields: Mapping[str, Sequence[Term]]) -> SearchRequest:
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r}; known: {', '.join(FIELDS)}")

        def one(name: str) -> Term | None:
            values = fields.get(name) or []
            if len(values) > 1:
                raise UsageError(f"{name} is given {len(values)} times; give it once")
            return values[0] if values else None

        def text(name: str) -> str | None:
            value = one(name)
            if isinstance(value, Upload):
                raise UsageError(f"{name} must be text, not a file")
            return value

        image = one("image")
        if image is not None and not isinstance(image, Upload):
            raise UsageError("image must be an uploaded file (multipart/form-data); the server opens no path")
        k = _number(text("k"), "k", int)
        rerank_k = _number(text("rerank_k"), "rerank_k", int)
        under = list(fields.get("under") or [])
        if any(isinstance(u, Upload) for u in under):
            raise UsageError("under must be text (a folder of the index), not a file")
        all_copies = (text("all_copies") or "").lower()
        if all_copies not in _TRUE + _FALSE:
            raise UsageError(f"all_copies must be true or false, got {all_copies!r}")
        where = SearchFilter.make(
            under=[str(u) for u in under],
            since=text("since") or None,
            until=text("until") or None,
            modality=text("modality") or None,
        )
        return cls(
            q=text("q") or None,
            image=image,
            add=list(fields.get("add") or []),
            subtract=list(fields.get("subtract") or []),
            k=10 if k is None else k,
            index=text("index") or None,
            rerank=text("rerank") or None,
            rerank_k=rerank_k,
            min_score=_number(text("min_score"), "min_score", float),
            where=where,
            all_copies=all_copies in _TRUE,
            dedup=_number(text("dedup"), "dedup", float),
        )

    def check(self, limits: ServeLimits) -> None:
        texts = [("q", self.q)] + [(name, t) for name in ("add", "subtract") for t in getattr(self, name)]
        for name, value in texts:
            if name != "q" and value == "":
                raise UsageError(f"an empty {name} term; give words or an image")
            if isinstance(value, str) and len(value) > limits.max_query_chars:
                raise RequestLimitError(
                    f"{name} is {len(value)} characters long; the limit is {limits.max_query_chars}"
                )
        if len(self.add) + len(self.subtract) > limits.max_terms:
            raise RequestLimitError(
                f"{len(self.add) + len(self.subtract)} add/subtract terms; the limit is {limits.max_terms}"
            )
        for name, value in (("k", self.k), ("rerank_k", self.rerank_k)):
            if value is not None and not 1 <= value <= limits.max_k:
                raise RequestLimitError(f"{name} must be between 1 and {limits.max_k}, got {value}")
        if not self.q and self.image is None:
            raise UsageError("give q (words), an image, or both")

    def uploads(self) -> list[Upload]:
        return [t for t in [self.image, *self.add, *self.subtract] if isinstance(t, Upload)]

    def query(self, image_path: Callable[[Upload], str]) -> Query:
        """The query, each uploaded image named by `image_path(upload)`."""

        def term(value: Term) -> Query:
            return Query(image=image_path(value)) if isinstance(value, Upload) else Query(text=value)

        main = Query(text=self.q, image=image_path(self.image) if self.image is not None else None)
        main.add, main.subtract = [term(t) for t in self.add], [term(t) for t in self.subtract]
        return main


def _number(raw: str | None, name: str, kind: type[int] | type[float]) -> Any:
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {raw!r}")
    return value


@dataclass
class ServedIndex:
    name: str  # as given to `retrv serve --index`
    engine: Engine  # warm; its reranker (when there is one) is the service's, shared


class SearchService:
    """One warm `Engine` per served index (module doc); the first index is the default."""

    def __init__(
        self,
        served: list[ServedIndex],
        *,
        reranker: QueuedReranker | None = None,
        encoders: Sequence[BatchingEncoder] = (),
        limits: ServeLimits | None = None,
        reasoner: str | None = None,
    ) -> None:
        if not served:
            raise UsageError("serve at least one index")
        self.served = served
        self.reranker = reranker
        self.encoders = list(encoders)
        self.limits = limits or ServeLimits()
        self.reasoner = reasoner

    @classmethod
    def open(
        cls,
        settings: Settings,
        indexes: Sequence[str] = (),
        *,
        limits: ServeLimits | None = None,
        force_answer: bool = False,
        trust_remote_code: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> SearchService:
        """Load what `settings` describe for each of `indexes` (default: `settings.index`), each model once."""
        from retrv.config import resolve_index_path
        from retrv.encoders.registry import load_encoder
        from retrv.engine import Engine, reranker_from_settings
        from retrv.index.store import read_meta
        from retrv.serve.batching import BatchingEncoder, QueuedReranker, ResolveQueue

        limits = limits or ServeLimits(max_megapixels=settings.max_megapixels)
        names = list(indexes) or [settings.index]
        roots = [resolve_index_path(name) for name in names]
        for i, root in enumerate(roots):
            if root in roots[:i]:
                raise UsageError(f"index {names[i]} is given twice (it is {root})")
        loaded = reranker_from_settings(
            settings, force_answer=force_answer, trust_remote_code=trust_remote_code, notify=notify
        )
        reranker = None
        if loaded is not None:
            queue = ResolveQueue(max_waiting=limits.reasoner_queue, timeout=limits.request_seconds)
            reranker = QueuedReranker(loaded, queue)
        encoders: dict[str, BatchingEncoder] = {}
        served = []
        for name, root in zip(names, roots, strict=True):
            spec = read_meta(root, settings.storage).encoder
            if spec not in encoders:
                encoders[spec] = BatchingEncoder(load_encoder(spec, device=settings.device, notify=notify))
            engine = Engine.from_settings(
                dataclasses.replace(settings, index=str(root)),
                encoder=encoders[spec],
                reranker=reranker,
                force_answer=force_answer,
                trust_remote_code=trust_remote_code,
                notify=notify,
            )
            served.append(ServedIndex(name, engine))
        return cls(
            served, reranker=reranker, encoders=list(encoders.values()), limits=limits, reasoner=settings.reasoner
        )

    # ---- what a request may name --------------------------------------------------------

    def resolve(self, index: str | None) -> ServedIndex:
        """The served index `index` names (its name as served, or its path); the first when None."""
        if index is None:
            return self.served[0]
        from retrv.config import resolve_index_path

        for s in self.served:
            if index == s.name:
                return s
        root = resolve_index_path(index)
        for s in self.served:
            if root == s.engine.index.root:
                return s
        raise NotServedError(f"index {index!r} is not served here; served: {', '.join(s.name for s in self.served)}")

    def item(self, index: str | None, item_id: str) -> Item:
        """A stored item of a served index, by id; NotServedError for any other id."""
        store = self.resolve(index).engine.index.store
        found = store.get([item_id]) if 0 < len(item_id) <= 512 else []
        if not found:
            raise NotServedError(f"no item {item_id!r} in this index")
        return found[0]

    @property
    def rerank_modes(self) -> list[str]:
        return [RERANK_NONE] + ([self.reranker.mode] if self.reranker is not None else [])

    # ---- requests ----------------------------------------------------------------------

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """The `retrv.search/1` document for `request` (what `retrv search --json` prints for the same query)."""
        from retrv.engine import Engine

        request.check(self.limits)
        served = self.resolve(request.index)
        mode = request.rerank or self.rerank_modes[-1]
        if mode not in self.rerank_modes:
            raise UsageError(
                f"rerank {mode!r} is not available here: this server reranks with {', '.join(self.rerank_modes)} "
                "(retrv serve --rerank MODE --reasoner ID|DIR)"
            )
        warm = served.engine
        warm.index.store.refresh()  # follow the table: what a build beside the server wrote is searched at once
        engine = Engine(
            warm.index,
            self.reranker if mode != RERANK_NONE else None,
            rerank_k=request.rerank_k or warm.rerank_k,
            min_score=request.min_score,
        )
        with tempfile.TemporaryDirectory(prefix="retrv-serve-") as folder:
            paths = {id(u): self._save_upload(u, Path(folder) / f"upload{i}") for i, u in enumerate(request.uploads())}
            try:
                ranking = engine.search(
                    request.query(lambda u: paths[id(u)]),
                    k=request.k,
                    where=request.where,
                    all_copies=request.all_copies,
                    near_duplicates=request.dedup,
                )
            except RetrvError as e:  # name the uploads as the client did, and the fields, not the CLI's flags
                e.args = (as_field_names(_rename(str(e), {paths[id(u)]: u.name for u in request.uploads()})),)
                raise
        ranking.query = request.query(lambda u: u.name)
        return engine.document(ranking)

    def _save_upload(self, upload: Upload, path: Path) -> str:
        from retrv.images import check_image
        from retrv.scan import IMAGE_TOO_LARGE, SkipFile

        path.write_bytes(upload.data)
        try:
            check_image(path, max_megapixels=self.limits.max_megapixels)
        except SkipFile as e:
            error = RequestTooLargeError if e.reason == IMAGE_TOO_LARGE else UsageError
            raise error(f"cannot read query image {upload.name}: {e}") from None
        return str(path)

    def info(self) -> dict[str, Any]:
        """What `GET /api/info` answers (`retrv.serve-info/1`, docs/cli.md)."""
        from retrv import __version__

        indexes = []
        for s in self.served:
            index = s.engine.index
            index.store.refresh()
            indexes.append(
                {
                    "name": s.name,
                    "path": str(index.root),
                    "encoder": index.encoder_spec,
                    "items": index.store.count(),
                    "table_version": index.store.version(),
                }
            )
        queue = self.reranker.queue if self.reranker is not None else None
        return {
            "schema": "retrv.serve-info/1",
            "version": __version__,
            "indexes": indexes,
            "rerank": {
                "modes": self.rerank_modes,
                "default": self.rerank_modes[-1],
                "reasoner": self.reasoner if self.reranker is not None else None,
                "waiting": queue.waiting if queue is not None else 0,
            },
            "encoders": {e.spec: e.stats.to_dict() for e in self.encoders},
            "limits": self.limits.to_dict(),
        }


# The library's errors name the CLI's flags; an API client gave fields.
_FLAG = re.compile(r"--(under|since|until|modality|all-copies|dedup|min-score|rerank-k)\b")


def as_field_names(message: str) -> str:
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)


def _rename(message: str, names: Mapping[str, str]) -> str:
    for path, name in names.items():
        message = message.replace(path, name)
    return message
