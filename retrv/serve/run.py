"""Listening: which addresses need a token, the socket, and uvicorn.

A loopback address (127.0.0.1, ::1, localhost) is the default and needs nothing. Any other address serves
every machine that can reach this one, so it needs a token (`--token`: requests without it get 401) or an
explicit `--insecure`. The socket is bound before uvicorn starts, so a port in use is a one-line error and
port 0 picks a free port, whose URL is then reported.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from retrv.errors import RetrvError, UsageError


def require_server_packages() -> None:
    """UsageError unless Starlette, uvicorn and python-multipart can be imported (checked before models load)."""
    import importlib.util

    modules = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}
    missing = [package for module, package in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(f"retrv serve needs {', '.join(missing)}: pip install 'retrv[serve]'")


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_binding(host: str, *, token: str | None, insecure: bool) -> None:
    if not is_loopback(host) and not token and not insecure:
        raise UsageError(
            f"--host {host} serves every machine that can reach this one; give --token TOKEN (clients send it), "
            "or --insecure to serve without one"
        )


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening; RetrvError naming the address when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise RetrvError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve_forever(app: Any, sock: socket.socket, *, log_requests: bool = False) -> None:
    """Serve `app` on `sock` until Ctrl-C (or SIGTERM); requests in flight get a few seconds to finish.
    uvicorn raises the signal again once it has shut down, so Ctrl-C ends here as a KeyboardInterrupt."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="info" if log_requests else "warning",
        access_log=log_requests,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])


def start_in_thread(app: Any, sock: socket.socket) -> Callable[[], None]:
    """Serve `app` on `sock` from a background thread (tests, benchmarks); returns the function that stops it."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="retrv-serve")
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return stop
