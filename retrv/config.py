"""Typed settings. Precedence: command-line flag > RETRV_* environment > config file > default.

The config file is TOML at `$RETRV_CONFIG` or `<user config dir>/retrv/config.toml`; its keys are
the field names of `Settings` (for example `encoder = "clip:openai/clip-vit-base-patch32"`). A value of
the wrong type or out of range is a `ConfigError` naming where it came from (`config.toml:3`,
`RETRV_BATCH_SIZE`, `--batch-size`); `Settings.origin(name)` says where each value came from.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from retrv.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

APP_NAME = "retrv"
DEFAULT_INDEX = "default"
INDEX_META_FILE = "retrv.json"  # in an index's folder: its encoder, dim and version
DEFAULT_REASONER = "Qwen/Qwen2.5-VL-3B-Instruct"  # --rerank score|reason without --reasoner
RERANK_MODES = ("none", "score", "reason")
CANDIDATE_TOKENS = ("icm", "glance", "full")
SCORE_STYLES = ("lamra", "retllm")


def _setting(
    default: Any,
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    size: bool = False,
    pairs: bool = False,
) -> Any:
    return field(default=default, metadata={"minimum": minimum, "choices": choices, "size": size, "pairs": pairs})


@dataclass(frozen=True)
class Settings:
    index: str = DEFAULT_INDEX
    encoder: str = "auto"
    device: str = "auto"
    batch_size: int = _setting(32, minimum=1)
    loader_threads: int = _setting(2, minimum=1)
    max_megapixels: float = _setting(64.0, minimum=1e-6)
    max_text_bytes: int = _setting(8_000_000, minimum=1)
    reasoner: str | None = None
    rerank: str | None = _setting(None, choices=RERANK_MODES)  # None: "score" with a reasoner, else "none"
    rerank_k: int = _setting(50, minimum=1)
    fusion_weight: float = 1.0
    max_inspections: int = _setting(5, minimum=0)
    max_new_tokens: int = _setting(512, minimum=1)
    candidate_tokens: str | None = _setting(None, choices=CANDIDATE_TOKENS)  # None: icm with ICM weights, else glance
    glance_image_tokens: int = _setting(4, minimum=1)
    glance_text_tokens: int = _setting(16, minimum=1)
    score_style: str = _setting("lamra", choices=SCORE_STYLES)
    visual_retracing: bool = False
    exact_search_max: int = _setting(50_000, minimum=0)
    server: str | None = None  # `retrv search` sends its query to a `retrv serve` at this URL
    ann_memory: str | None = _setting(None, size=True)  # e.g. "512MB", "4GiB": the ANN kind is chosen to fit
    storage_options: str | None = _setting(None, pairs=True)  # "key=value,..." for an index on object storage
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rerank_mode(self) -> str:
        """The stage 2 that runs: `rerank`, or "score" when only a reasoner is given, else "none"."""
        return self.rerank or ("score" if self.reasoner else "none")

    def origin(self, name: str) -> str:
        """Where the value of setting `name` came from: a flag, a variable, `FILE:LINE`, or "default"."""
        return self.origins.get(name, "default")

    @property
    def storage(self) -> dict[str, str]:
        """`storage_options` as the dict LanceDB takes (empty: Lance reads the usual environment variables)."""
        return parse_pairs(self.storage_options) if self.storage_options else {}

    @property
    def ann_memory_bytes(self) -> int | None:
        return parse_size(self.ann_memory) if self.ann_memory else None


SETTING_NAMES = tuple(f.name for f in fields(Settings) if f.name != "origins")


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME))


def data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("RETRV_HOME") or user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """Derived data that can be rebuilt (the lite encoder's class table, the ANN of an index on object storage)."""
    if os.environ.get("RETRV_CACHE_DIR"):
        return Path(os.environ["RETRV_CACHE_DIR"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME))


def config_file() -> Path:
    return Path(os.environ.get("RETRV_CONFIG") or config_dir() / "config.toml")


def env_var(name: str) -> str:
    return f"RETRV_{name.upper()}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def coerce(name: str, raw: Any, origin: str) -> Any:
    """`raw` (a TOML value, or a string from the environment or a flag) as setting `name`'s type, checked."""
    spec = next(f for f in fields(Settings) if f.name == name)
    kind = str(spec.type)
    from_text = isinstance(raw, str)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{origin}: {name} = {raw!r}: expected {expected}")

    if raw is None or (from_text and raw == "" and "None" in kind):
        return None
    if kind.startswith("bool"):
        if isinstance(raw, bool):
            return raw
        if from_text and raw.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if kind.startswith("int"):
        if isinstance(raw, bool) or not (isinstance(raw, int) or (from_text and re.fullmatch(r"\s*[+-]?\d+\s*", raw))):
            raise bad("an integer")
        value: Any = int(raw)
    elif kind.startswith("float"):
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise bad("a number")
        try:
            value = float(raw)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(value):
            raise bad("a finite number")
    else:
        if not isinstance(raw, str):
            raise bad("a string")
        value = raw
    minimum, choices = spec.metadata.get("minimum"), spec.metadata.get("choices")
    if minimum is not None and value < minimum:
        raise bad(f"at least {minimum:g}" if minimum >= 1 or minimum == 0 else "a positive number")
    if choices and value not in choices:
        raise bad("one of " + ", ".join(choices))
    try:
        if spec.metadata.get("size"):
            parse_size(value)
        if spec.metadata.get("pairs"):
            parse_pairs(value)
    except ValueError as e:
        raise bad(str(e)) from None
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes in a size such as `512MB`, `4GiB`, `1.5g` or `1000000` (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB
    of 1024); ValueError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("a size such as 512MB or 4GiB")
    number, unit = float(match.group(1)), match.group(2).lower()
    scale = _SIZE_UNITS[unit[:1]] if "i" not in unit else 1024 ** " kmgt".index(unit[0])
    if number * scale < 1:
        raise ValueError("a size of at least 1 byte")
    return int(number * scale)


def parse_pairs(text: str) -> dict[str, str]:
    """`key=value,key=value` as a dict (storage options: `aws_endpoint=http://127.0.0.1:9000,allow_http=true`)."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError("key=value pairs separated by commas")
        pairs[key.strip()] = value.strip()
    return pairs


def _file_line(text: str, key: str) -> int | None:
    match = re.search(rf"^\s*{re.escape(key)}\s*=", text, re.M)
    return text.count("\n", 0, match.start()) + 1 if match else None


def load_settings(overrides: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, the config file, RETRV_* variables and `overrides` (flag values; None = not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    path = Path(env["RETRV_CONFIG"]) if env.get("RETRV_CONFIG") else config_file()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        for key, raw in data.items():
            line = _file_line(text, key)
            where = f"{path}:{line}" if line else str(path)
            if key not in SETTING_NAMES:
                raise ConfigError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(SETTING_NAMES))}")
            values[key], origins[key] = coerce(key, raw, where), where
    for name in SETTING_NAMES:
        var = env_var(name)
        if var in env:
            values[name], origins[name] = coerce(name, env[var], var), var
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name], origins[name] = coerce(name, raw, flag(name)), flag(name)
    return replace(Settings(), **values, origins=origins)


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
OBJECT_STORE_SCHEMES = ("s3", "gs", "az", "abfs", "memory")


def is_index_name(text: str) -> bool:
    """A bare name (`photos`), as opposed to a path (`./photos-index`, `/x/y`)."""
    return bool(_NAME.match(text)) and text not in (".", "..")


def is_uri(index: str | os.PathLike[str]) -> bool:
    """An index on object storage (`s3://bucket/prefix`, `gs://…`, `az://…`), not a local path."""
    scheme, sep, _ = os.fspath(index).partition("://")
    return bool(sep) and scheme.lower() in OBJECT_STORE_SCHEMES


def resolve_index_path(index: str | os.PathLike[str] | None) -> Path | str:
    """A bare name (`photos`) lives under the user data dir; a path (`./photos-index`, `/x/y`) is used as given;
    an object-store URI (`s3://bucket/prefix`) is kept as it is, without a trailing slash."""
    text = os.fspath(index) if index is not None else DEFAULT_INDEX
    if is_uri(text):
        return text.rstrip("/")
    if is_index_name(text):
        return data_dir() / "indexes" / text
    return Path(text).expanduser().resolve()
