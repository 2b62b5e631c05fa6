"""`retrv search --server URL`: the query sent to a running `retrv serve`, with the standard library only.

This path imports neither torch nor LanceDB, so a search through a warm server costs a Python start and one
HTTP request. Images of the query are read here, on the client's machine, and uploaded (multipart), named as
the user typed them, so the answer describes the query as a local search would. An error the server
answers (`{"error": "..."}`) becomes the same one-line `RetrvError`; a server that does not answer is a
`ServerUnreachableError` that says how to start one.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import RetrvError, ServerUnreachableError

if TYPE_CHECKING:
    from retrv.config import Settings
    from retrv.index.filters import SearchFilter
    from retrv.items import Query

TIMEOUT_SECONDS = 600.0  # a reasoner on a CPU may think for minutes; the server has its own limit too


def server_url(url: str, path: str = "") -> str:
    """`url` with a scheme (`127.0.0.1:8765` means http) and without a trailing slash, then `path`."""
    base = url.strip()
    if "://" not in base:
        base = "http://" + base
    return base.rstrip("/") + path


def search_via_server(
    settings: Settings,
    query: Query,
    *,
    k: int = 10,
    min_score: float | None = None,
    token: str | None = None,
    timeout: float = TIMEOUT_SECONDS,
    where: SearchFilter | None = None,
    all_copies: bool = False,
    near_duplicates: float | None = None,
) -> dict[str, Any]:
    """The `retrv.search/1` document the server at `settings.server` answers for `query` (docs/cli.md, HTTP API).

    The index, rerank mode and rerank depth go along when they were set (a flag, a variable, the config file);
    otherwise the server's own apply: its first index, its reranker. An index path goes as an absolute path.
    """
    from retrv.config import is_index_name, resolve_index_path

    if not settings.server:
        raise ValueError("settings.server names no server")
    fields: list[tuple[str, str | Path]] = []
    if query.text:
        fields.append(("q", query.text))
    if query.image is not None:
        fields.append(("image", Path(query.image)))
    for name, terms in (("add", query.add), ("subtract", query.subtract)):
        fields += [(name, Path(t.image) if t.image is not None else t.text or "") for t in terms]
    index = settings.index if is_index_name(settings.index) else str(resolve_index_path(settings.index))
    options = {
        "k": k,
        "index": index if settings.origin("index") != "default" else None,
        "rerank": settings.rerank if settings.origin("rerank") != "default" else None,
        "rerank_k": settings.rerank_k if settings.origin("rerank_k") != "default" else None,
        "min_score": min_score,
        "all_copies": "true" if all_copies else None,
        "dedup": near_duplicates,
    }
    if where is not None:
        fields += [("under", root) for root in where.under]
        since, until = (None if t is None else f"@{t!r}" for t in (where.since, where.until))
        options.update(since=since, until=until, modality=where.modality)
    fields += [(name, str(value)) for name, value in options.items() if value is not None]
    body, content_type = _multipart(fields)
    return request_json(
        settings.server, "/api/search", body=body, content_type=content_type, token=token, timeout=timeout
    )


def request_json(
    url: str,
    path: str,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    token: str | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """GET (or POST `body`) `path` on the server at `url` and decode its JSON answer."""
    import urllib.error
    import urllib.request

    target = server_url(url, path)
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(target, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise RetrvError(_error_of(e, url)) from None
    except TimeoutError:
        raise ServerUnreachableError(
            f"the retrv server at {server_url(url)} did not answer within {timeout:g} s"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise ServerUnreachableError(
                f"the retrv server at {server_url(url)} did not answer within {timeout:g} s"
            ) from None
        raise ServerUnreachableError(
            f"no retrv server answers at {server_url(url)} ({getattr(reason, 'strerror', None) or reason}); "
            "start one with `retrv serve`, or search locally without --server / RETRV_SERVER"
        ) from None
    except ValueError:
        raise RetrvError(f"{server_url(url)} answered something other than JSON; is it a retrv server?") from None


def _error_of(e: Any, url: str) -> str:
    try:
        message = json.loads(e.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"{server_url(url)} answered HTTP {e.code} ({e.reason}); is it a retrv server?"
    return str(message)


def _multipart(fields: list[tuple[str, str | Path]]) -> tuple[bytes, str]:
    """multipart/form-data (RFC 7578): text fields, and files read from disk, named as given."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        if isinstance(value, Path):
            try:
                data = value.expanduser().read_bytes()
            except OSError as e:
                raise RetrvError(f"cannot read query image {value}: {e.strerror or e}") from None
            filename = str(value).replace("\\", "\\\\").replace('"', '\\"')
            disposition = f'form-data; name="{name}"; filename="{filename}"'
            head = f"Content-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
        else:
            data = value.encode("utf-8", "surrogateescape")
            head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(f"--{boundary}\r\n".encode() + head.encode("utf-8", "surrogateescape") + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
