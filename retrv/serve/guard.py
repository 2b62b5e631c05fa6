"""The checks in front of every route (ASGI middleware): the Host header, the token, the body size.

- Host: a server bound to a loopback address answers only requests addressed to a loopback name
  (`localhost`, `127.0.0.1`, `[::1]`), so a web page elsewhere cannot reach it through DNS rebinding.
- Token: with `--token`, every route but the page itself and its static files needs it, as
  `Authorization: Bearer TOKEN` or the `retrv_token` cookie (which the page sets from `/#token=TOKEN`).
- Body size: a request body over `max_body` bytes is refused with 413, from its Content-Length when it
  declares one, else as soon as it has sent too much.
Refusals are JSON, `{"error": "..."}`, like every other error of the API.
"""

from __future__ import annotations

import json
import secrets
from http.cookies import SimpleCookie
from typing import Any

from retrv.errors import RequestTooLargeError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = ("/",)
OPEN_PREFIX = "/static/"
TOKEN_COOKIE = "retrv_token"

Scope = dict[str, Any]


class Guard:
    def __init__(self, app: Any, *, token: str | None, loopback_only: bool, max_body: int) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        await self.app(scope, self._limited(receive), send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if self.loopback_only and host_name(headers.get("host", "")) not in LOOPBACK_NAMES:
            return 403, (
                "this server answers only requests addressed to localhost, 127.0.0.1 or [::1]; "
                "to serve other names, bind their address with --host and --token"
            )
        path = scope["path"]
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIX)
        if self.token is not None and not open_path and not self._authorized(headers):
            return 401, "this server needs a token: send 'Authorization: Bearer TOKEN', or open /#token=TOKEN"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return 413, _too_large(self.max_body)
        return None

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        given = ""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif "cookie" in headers:
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # a malformed cookie header carries no token
                return False
            given = cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else ""
        return secrets.compare_digest(given.encode(), self.token.encode())

    def _limited(self, receive: Any) -> Any:
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise RequestTooLargeError(_too_large(self.max_body))
            return message

        return limited


def host_name(host: str) -> str:
    """The name in a Host header, without its port (`[::1]:8765` -> `::1`)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _too_large(limit: int) -> str:
    return f"the request body is over the server's limit of {limit / 2**20:g} MiB (retrv serve --max-upload-mb)"


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
