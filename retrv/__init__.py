"""retrv: universal multimodal retrieval. `Index` for stage 1, `Engine` for both stages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"
__all__ = ["Engine", "Hit", "Index", "Query", "Ranking", "SearchFilter", "__version__"]

_EXPORTS = {
    "Engine": "retrv.engine",
    "Index": "retrv.index.index",
    "Query": "retrv.items",
    "Hit": "retrv.items",
    "Ranking": "retrv.items",
    "SearchFilter": "retrv.index.filters",
}

if TYPE_CHECKING:
    from retrv.engine import Engine
    from retrv.index.filters import SearchFilter
    from retrv.index.index import Index
    from retrv.items import Hit, Query, Ranking


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retrv' has no attribute {name!r}")
