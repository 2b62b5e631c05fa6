"""The one front door for model specs: a local directory or a Hugging Face id, and where its files are.

`parse_model_ref` reads `DIR`, `org/name` or `org/name@revision` for every model retrv loads (encoders after
their `clip:` / `text:` prefix, reasoners as they are); `model_dir` turns it into a local directory, deciding
up front and fast, so that a machine without network fails (or falls back) in seconds instead of spending
half a minute in download retries:

1. a local directory is used as is (it must hold a `config.json`);
2. an HF id whose snapshot is in the cache is used from there, with no network;
3. under `HF_HUB_OFFLINE` nothing else is tried;
4. otherwise a 2-second TCP probe of the hub decides whether a download is worth attempting, and only the
   files a safetensors model needs are fetched.

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

from retrv.errors import ModelLoadError, ModelNotCachedError, UsageError

HF_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ModelRef:
    """A model as a person names it: an absolute directory, or a hub id with an optional revision."""

    target: str
    revision: str | None = None
    local: bool = False

    def __str__(self) -> str:
        return self.target + (f"@{self.revision}" if self.revision else "")


def looks_like_path(target: str) -> bool:
    """True for things a person types as a path rather than as an HF id (`org/name`)."""
    return (
        target.startswith(("/", "./", "../", "~", "\\"))
        or target in (".", "..")
        or bool(re.match(r"^[A-Za-z]:[\\/]", target))
        or target.count("/") > 1
        or Path(target).expanduser().exists()
    )


def parse_model_ref(text: str) -> ModelRef:
    """`DIR`, `org/name` or `org/name@rev` as a ModelRef; UsageError (one line, saying why) otherwise."""
    text = (text or "").strip()
    if not text:
        raise UsageError("empty model name")
    if looks_like_path(text):
        return ModelRef(str(Path(text).expanduser().resolve()), local=True)
    target, at, revision = text.partition("@")
    if not HF_ID_PATTERN.match(target):
        raise UsageError(f"{target!r} is neither an existing directory nor a Hugging Face id (org/name)")
    if at and not revision.strip():
        raise UsageError(f"nothing after '@' in {text!r} (a revision is a branch, tag or commit)")
    return ModelRef(target, revision.strip() or None)


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


def _cached_snapshot(ref: ModelRef, cache: Path) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(ref.target, revision=ref.revision, cache_dir=cache, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        return None
    return path if (path / "config.json").is_file() else None


def model_dir(
    ref: ModelRef, *, instead: str = "a local directory", markers: tuple[str, ...] = ("config.json",)
) -> Path:
    """The directory holding `ref`'s files (see the module doc); ModelLoadError at once when it cannot be had.

    `instead` completes "run once with network, or pass ..." in the error for a model that is not cached;
    a local directory must hold one of `markers`.
    """
    if ref.local:
        path = Path(ref.target)
        if not path.is_dir():
            raise ModelLoadError(f"model directory not found: {path}")
        if not any((path / marker).is_file() for marker in markers):
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no {' or '.join(markers)})")
        return path
    cache = hub_cache_dir()
    cached = _cached_snapshot(ref, cache)
    if cached is not None:
        return cached
    why = "HF_HUB_OFFLINE is set" if hub_offline() else None
    if why is None and not hub_reachable():
        why = "the hub is unreachable"
    if why is not None:
        local = Path(ref.target)  # "models/mine" reads as a hub id; say so when "models/" is a folder here
        nearly = f" (nor is there a directory {local})" if local.parent.name and local.parent.is_dir() else ""
        raise ModelNotCachedError(
            f"{ref} is not in the Hugging Face cache ({cache}){nearly} and {why}; run once with network, or pass "
            f"{instead}",
            why,
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.target, revision=ref.revision, cache_dir=cache, allow_patterns=HUB_FILES))
    except Exception as exc:  # RepositoryNotFound, RevisionNotFound, HTTP errors: all one-line user errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{ref}: cannot fetch from the Hugging Face hub ({first})") from None


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


def load_failure(where: Path | str, exc: Exception) -> ModelLoadError:
    """Turn a from_pretrained exception into one line a person can act on."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    hint = " (retrv loads safetensors weights only)" if "safetensors" in first_line else ""
    return ModelLoadError(f"could not load {where}: {type(exc).__name__}: {first_line}{hint}")
