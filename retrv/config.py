"""Typed settings. Precedence: command-line flag > RETRV_* environment > config file > default.

The config file is TOML at `$RETRV_CONFIG` or `<user config dir>/retrv/config.toml`; its keys are
the field names of `Settings` (for example `encoder = "clip:openai/clip-vit-base-patch32"`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

APP_NAME = "retrv"
DEFAULT_INDEX = "default"


@dataclass(frozen=True)
class Settings:
    index: str = DEFAULT_INDEX
    encoder: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    loader_threads: int = 2
    max_megapixels: float = 64.0
    max_text_bytes: int = 8_000_000
    reasoner: str | None = None
    rerank: str | None = None  # None: "score" when a reasoner is configured, else "none"
    rerank_k: int = 50
    fusion_weight: float = 1.0
    max_inspections: int = 5
    max_new_tokens: int = 512
    exact_search_max: int = 50_000


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME))


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("RETRV_HOME") or user_data_dir(APP_NAME))


def config_file() -> Path:
    return Path(os.environ.get("RETRV_CONFIG") or config_dir() / "config.toml")


def _coerce(name: str, raw: Any, source: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if "int" in kind and not isinstance(raw, bool):
            return int(raw)
        if "float" in kind:
            return float(raw)
        return None if raw in ("", None) else str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {name} = {raw!r} is not a valid {kind}") from None


def load_settings(overrides: dict[str, Any] | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Settings from defaults, the config file, RETRV_* variables and `overrides` (None = not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = Path(env["RETRV_CONFIG"]) if env.get("RETRV_CONFIG") else config_file()
    names = {f.name for f in fields(Settings)}
    if path.is_file():
        import tomllib

        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
        for key, raw in data.items():
            if key not in names:
                raise ValueError(f"{path}: unknown setting {key!r}; known: {', '.join(sorted(names))}")
            values[key] = _coerce(key, raw, str(path))
    for name in names:
        var = f"RETRV_{name.upper()}"
        if var in env:
            values[name] = _coerce(name, env[var], var)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw, f"--{name.replace('_', '-')}")
    return replace(Settings(), **values)


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def resolve_index_path(index: str | os.PathLike[str] | None) -> Path:
    """A bare name (`photos`) lives under the user data dir; a path (`./photos-index`, `/x/y`) is used as given."""
    text = os.fspath(index) if index is not None else DEFAULT_INDEX
    if _NAME.match(text) and text not in (".", ".."):
        return data_dir() / "indexes" / text
    return Path(text).expanduser().resolve()
