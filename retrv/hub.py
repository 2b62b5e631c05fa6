"""Where a model's files come from: a local directory, the Hugging Face cache, or the hub.

The decision is made up front and fast, so that a machine without network fails (or falls back)
in seconds instead of spending half a minute in download retries:

1. a local directory is used as is;
2. an HF id whose `config.json` is in the cache loads with `local_files_only=True` (no network);
3. under `HF_HUB_OFFLINE` nothing else is tried;
4. otherwise a 2-second TCP probe of the hub decides whether a download is worth attempting.

Environment variables are read at call time (not at import time, as huggingface_hub does), so
`--offline` and test monkeypatching take effect even after the hub library was imported.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from retrv.errors import ModelLoadError

HF_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_TRUE = {"1", "on", "yes", "true"}


class ModelNotCachedError(ModelLoadError):
    """An HF id that is not in the cache and cannot be downloaded now; `why` says which."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def hub_offline() -> bool:
    return any((os.environ.get(v) or "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved the way huggingface_hub does, but from the current environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    hf_home = os.environ.get("HF_HOME") or os.path.join(xdg_cache, "huggingface")
    return Path(hf_home).expanduser() / "hub"


def looks_like_path(target: str) -> bool:
    """True for things a person types as a path rather than as an HF id (`org/name`)."""
    return (
        target.startswith(("/", "./", "../", "~", "\\"))
        or target in (".", "..")
        or bool(re.match(r"^[A-Za-z]:[\\/]", target))
        or target.count("/") > 1
        or Path(target).expanduser().exists()
    )


def is_cached(repo_id: str, revision: str | None = None, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
    return isinstance(found, str)


def hub_reachable(timeout: float = 2.0) -> bool:
    """A TCP connect to the hub endpoint, DNS included, bounded by `timeout` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the probe runs on a daemon thread we stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


@dataclass(frozen=True)
class ModelSource:
    """Arguments for `from_pretrained`: where the files are and whether the network may be used."""

    location: str  # a directory or an HF id
    revision: str | None
    cache_dir: str | None
    local_files_only: bool

    def kwargs(self) -> dict:
        kw: dict = {"local_files_only": self.local_files_only}
        if self.revision:
            kw["revision"] = self.revision
        if self.cache_dir:
            kw["cache_dir"] = self.cache_dir
        return kw


def resolve_source(target: str, revision: str | None = None, *, kind: str = "clip") -> ModelSource:
    """Decide where `target` loads from, or raise ModelLoadError at once with what to do instead."""
    if looks_like_path(target):
        path = Path(target).expanduser().resolve()
        if not path.is_dir():
            raise ModelLoadError(f"model directory not found: {path}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
        return ModelSource(str(path), None, None, local_files_only=True)
    if not HF_ID_PATTERN.match(target):
        raise ModelLoadError(f"{target!r} is neither an existing directory nor a Hugging Face model id (org/name)")
    cache = str(hub_cache_dir())
    if is_cached(target, revision):
        return ModelSource(target, revision, cache, local_files_only=True)
    where = f"{target}" + (f"@{revision}" if revision else "")
    why = "HF_HUB_OFFLINE is set" if hub_offline() else None
    if why is None and not hub_reachable():
        why = "the hub is unreachable"
    if why is not None:
        raise ModelNotCachedError(
            f"{where} is not in the Hugging Face cache ({cache}) and {why}; "
            f"run once with network, or pass --encoder {kind}:/path/to/model",
            why,
        )
    return ModelSource(target, revision, cache, local_files_only=False)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info/warning logs while loading; the library never prints."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_failure(source: ModelSource, exc: Exception) -> ModelLoadError:
    """Turn a from_pretrained exception into one line a person can act on."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    hint = " (retrv loads safetensors weights only)" if "safetensors" in first_line else ""
    return ModelLoadError(f"could not load {source.location}: {type(exc).__name__}: {first_line}{hint}")
