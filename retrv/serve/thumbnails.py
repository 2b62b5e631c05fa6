"""Small renditions of indexed images: thumbnails for the result grid, a larger view for one image.

Only stored items are rendered, from the path the index holds (the server never opens a path a client sends),
through the one guarded image opener. A thumbnail is made on its first request and cached beside the index,
`<index>/thumbs/<content hash>.<side>.webp`: equal content shares one file, changed content gets a new one,
and a renamed file keeps its thumbnail. The larger view is made per request and not kept.
"""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from retrv.errors import NotServedError

if TYPE_CHECKING:
    from retrv.items import Item

THUMB_SIDE = 320
VIEW_SIDE = 1600
MEDIA_TYPE = "image/webp"
_HASH = re.compile(r"^[0-9a-f]{8,128}$")
# One render per CPU at a time: a page of results asks for 20 thumbnails at once, and each may decode a large photo.
_RENDERS = threading.BoundedSemaphore(os.cpu_count() or 1)


def thumbnail(folder: Path, item: Item, *, max_megapixels: float) -> bytes:
    """The item's thumbnail (at most THUMB_SIDE pixels a side), from the cache in `folder` or made and cached now."""
    cached = folder / f"{item.content_hash}.{THUMB_SIDE}.webp" if _HASH.match(item.content_hash) else None
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    data = render(item, THUMB_SIDE, max_megapixels=max_megapixels, quality=80)
    if cached is not None:
        _write(cached, data)
    return data


def render(item: Item, side: int, *, max_megapixels: float, quality: int = 85) -> bytes:
    """The item's image scaled to fit `side` x `side` (never enlarged), as WebP; NotServedError when it has none."""
    from retrv.images import load_image
    from retrv.scan import SkipFile

    if not item.image_path:
        raise NotServedError(f"item {item.id!r} has no image")
    with _RENDERS:
        try:
            image = load_image(item.image_path, max_megapixels=max_megapixels, draft_size=side)
        except SkipFile as e:
            raise NotServedError(f"the image of item {item.id!r} cannot be read now: {e.since_indexed()}") from None
        image.thumbnail((side, side))
        out = io.BytesIO()
        image.save(out, format="WEBP", quality=quality, method=4)
        return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Atomically (two requests may make the same thumbnail); a read-only or full disk only costs the cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
