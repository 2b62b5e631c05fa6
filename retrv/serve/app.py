"""The HTTP routes of `retrv serve` (Starlette), over a `SearchService`; the API is documented in docs/cli.md.

Errors follow the CLI's contract: a `RetrvError` is a 4xx (503 for a busy reasoner) with `{"error": "one line"}`;
anything else is a 500 whose traceback goes to the server's log, not to the client. Model work runs on worker
threads, so concurrent requests are served (and their encoder calls batched) while one is searching.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from retrv.errors import (
    IndexNotFoundError,
    NotServedError,
    RequestLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    RetrvError,
    ServerBusyError,
    UsageError,
)
from retrv.items import json_text
from retrv.serve.service import SearchRequest, SearchService, Term, Upload

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

STATIC = Path(__file__).parent / "static"
T = TypeVar("T")

# The most specific class first.
STATUS: list[tuple[type[RetrvError], int]] = [
    (RequestTooLargeError, 413),
    (RequestTimeoutError, 408),
    (RequestLimitError, 400),
    (ServerBusyError, 503),
    (NotServedError, 404),
    (IndexNotFoundError, 404),
    (UsageError, 400),
    (RetrvError, 400),
]


def create_app(service: SearchService, *, token: str | None = None, loopback_only: bool = True) -> Starlette:
    """The ASGI app serving `service`: the API, thumbnails and the page (routes in docs/cli.md)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from retrv.serve.guard import Guard

    limits = service.limits
    api = _Api(service)
    routes = [
        Route("/", api.page),
        Route("/api/health", api.health),
        Route("/api/info", api.info),
        Route("/api/search", api.search, methods=["GET", "POST"]),
        Route("/thumb/{item_id:path}", api.thumb),
        Route("/image/{item_id:path}", api.image),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    guard = Middleware(Guard, token=token, loopback_only=loopback_only, max_body=limits.max_upload_bytes)
    handlers: dict[Any, Callable] = {RetrvError: _retrv_error, HTTPException: _http_error, Exception: _internal_error}
    return Starlette(routes=routes, middleware=[guard], exception_handlers=handlers)


class _Api:
    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.limits = service.limits

    async def page(self, request: Request) -> Response:
        from starlette.responses import FileResponse

        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def info(self, request: Request) -> Response:
        return _json(await self._in_thread(self.service.info))

    async def search(self, request: Request) -> Response:
        async def answer() -> dict[str, Any]:
            search = SearchRequest.from_fields(await self._fields(request))
            return await self._in_thread(lambda: self.service.search(search))

        return _json(await self._in_time(answer))

    async def thumb(self, request: Request) -> Response:
        from retrv.serve.thumbnails import MEDIA_TYPE, thumbnail

        def make() -> bytes:
            folder, item = self._item(request)
            return thumbnail(folder, item, max_megapixels=self.limits.max_megapixels)

        data = await self._in_time(lambda: self._in_thread(make))
        return _image(data, MEDIA_TYPE)

    async def image(self, request: Request) -> Response:
        from retrv.serve.thumbnails import MEDIA_TYPE, VIEW_SIDE, render

        def make() -> bytes:
            _, item = self._item(request)
            return render(item, VIEW_SIDE, max_megapixels=self.limits.max_megapixels)

        data = await self._in_time(lambda: self._in_thread(make))
        return _image(data, MEDIA_TYPE)

    def _item(self, request: Request) -> tuple[Path, Any]:
        """The thumbnail folder of the request's index, and its item."""
        index = request.query_params.get("index") or None
        thumbs = self.service.resolve(index).engine.index.store.local_folder("thumbs")
        return thumbs, self.service.item(index, request.path_params["item_id"])

    async def _fields(self, request: Request) -> dict[str, list[Term]]:
        """The request's fields, from its query string (GET), or its JSON or multipart body (POST)."""
        if request.method == "GET":
            return _grouped(request.query_params.multi_items())
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            import json

            try:
                body = json.loads(await request.body())
            except ValueError as e:
                raise UsageError(f"the body is not valid JSON ({e})") from None
            return _json_fields(body)
        if content_type == "multipart/form-data":
            from starlette.datastructures import UploadFile

            form = await request.form(max_files=self.limits.max_terms + 1, max_fields=64)
            pairs: list[tuple[str, Term]] = []
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    pairs.append((name, Upload(value.filename or "upload", await value.read())))
                else:
                    pairs.append((name, value))
            await form.close()
            return _grouped(pairs)
        raise UsageError("send the query as JSON (application/json) or as a form (multipart/form-data)")

    async def _in_thread(self, work: Callable[[], T]) -> T:
        import anyio.to_thread

        # abandon_on_cancel: a request out of time answers at once; the thread's work finishes unobserved
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)

    async def _in_time(self, work: Callable[[], Any]) -> Any:
        import anyio

        with anyio.move_on_after(self.limits.request_seconds) as scope:
            return await work()
        assert scope.cancelled_caught
        raise RequestTimeoutError(
            f"the request took longer than the server's limit of {self.limits.request_seconds:g} s "
            "(retrv serve --request-timeout)"
        )


def _grouped(pairs: Any) -> dict[str, list[Term]]:
    fields: dict[str, list[Term]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def _json_fields(body: Any) -> dict[str, list[Term]]:
    """A JSON object's fields as lists of text: numbers as written, true/false as "true"/"false", a list for a
    repeated field (add, subtract, under)."""
    if not isinstance(body, dict):
        raise UsageError('the JSON body must be an object, e.g. {"q": "a red car", "k": 5}')
    fields: dict[str, list[Term]] = {}
    for name, value in body.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool):
                v = "true" if v else "false"
            if not isinstance(v, (str, int, float)):
                raise UsageError(f"{name} must be text, a number or true/false, not {json_text(v, indent=None)}")
            fields.setdefault(name, []).append(str(v))
    return fields


def _json(data: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(json_text(data, indent=None), status_code=status, media_type="application/json")


def _image(data: bytes, media_type: str) -> Response:
    from starlette.responses import Response

    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})


def _one_line(message: str) -> str:
    return " ".join(message.split())


async def _retrv_error(request: Request, exc: Exception) -> Response:
    status = next(code for cls, code in STATUS if isinstance(exc, cls))
    return _json({"error": _one_line(str(exc))}, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 400)
    return _json({"error": _one_line(str(getattr(exc, "detail", "")) or "bad request")}, status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises the exception after this answer, and uvicorn logs it with its traceback.
    return _json({"error": "internal error; the server's log has the details"}, 500)
