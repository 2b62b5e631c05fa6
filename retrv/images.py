"""Image files as index items: safe decoding to RGB.

`load_image` checks the pixel count from the header before anything is decoded (decompression
bombs), applies the EXIF orientation, takes the first frame of an animation (GIF, WebP, TIFF
pages), and converts every mode to RGB: transparency is laid over white, 16-bit and float
greyscale are rescaled to 8 bits. Whatever it cannot use raises `SkipFile` with the reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from retrv.scan import CORRUPT_IMAGE, IMAGE_TOO_LARGE, NOT_AN_IMAGE, PERMISSION_DENIED, VANISHED, SkipFile

if TYPE_CHECKING:
    from PIL import Image


@contextmanager
def pil_limits(max_megapixels: float) -> Iterator[None]:
    """PIL's own bomb check follows our cap, and its warning becomes an error we turn into a skip.

    Both are process-wide, so they are set for the duration of the build (loader threads see them).
    """
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1_000_000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(
    path: str | os.PathLike[str], *, max_megapixels: float | None = None, draft_size: int | None = None
) -> Image.Image:
    """Decode an image file to RGB, safely: size checked before decoding, EXIF orientation applied,
    first frame of an animation, every mode converted. Raises `SkipFile` with the reason."""
    from PIL import Image, ImageOps

    im = _open(path)
    with im:
        _check_pixels(im, max_megapixels)
        try:
            if draft_size and im.format == "JPEG":  # let libjpeg decode at 1/2..1/8 scale when that is still big enough
                im.draft(None, (draft_size, draft_size))
            im.load()
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block should not cost the picture
                oriented = im
            rgb = to_rgb(oriented)
            return rgb.copy() if rgb is im else rgb  # `im` is closed when this block ends
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SkipFile(IMAGE_TOO_LARGE, str(e)) from None
        except Exception as e:
            raise SkipFile(CORRUPT_IMAGE, str(e) or type(e).__name__) from None


def check_image(path: str | os.PathLike[str], *, max_megapixels: float) -> tuple[int, int]:
    """The (width, height) an image file declares, read from its header, nothing decoded; `SkipFile` when it
    is no image or over `max_megapixels` (what a server checks before it spends memory on an upload)."""
    with _open(path) as im:
        _check_pixels(im, max_megapixels)
        return im.size


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """`Image.open` (the header only), its many exceptions turned into `SkipFile` with the reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise SkipFile(VANISHED, "gone before it could be read") from None
    except PermissionError:
        raise SkipFile(PERMISSION_DENIED) from None
    except UnidentifiedImageError:
        raise SkipFile(NOT_AN_IMAGE, "no known image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SkipFile(IMAGE_TOO_LARGE, str(e)) from None
    except Exception as e:  # PIL raises many kinds (SyntaxError, struct.error, ...) for broken headers
        raise SkipFile(CORRUPT_IMAGE, str(e) or type(e).__name__) from None


def _check_pixels(im: Image.Image, max_megapixels: float | None) -> None:
    width, height = im.size
    if max_megapixels is not None and width * height > max_megapixels * 1_000_000:
        megapixels = width * height / 1e6
        detail = f"{width}x{height} is {megapixels:.1f} megapixels, over max_megapixels={max_megapixels:g}"
        raise SkipFile(IMAGE_TOO_LARGE, detail)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency over white, 16-bit and float greyscale rescaled to 8 bits."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            a = a / 257.0
        else:  # 32-bit int or float: no fixed range, so stretch what is there
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise SkipFile(CORRUPT_IMAGE, f"cannot convert colour mode {im.mode} to RGB ({e})") from None


def load_query_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open a query image as RGB (the same safe decoding as indexing), or raise a one-line RetrvError."""
    from pathlib import Path

    from retrv.errors import RetrvError

    p = Path(path).expanduser()
    if not p.is_file():
        raise RetrvError(f"query image not found: {p}")
    try:
        return load_image(p)
    except SkipFile as e:
        raise RetrvError(f"cannot read query image {p}: {e}") from None


EXIF_HEAD_BYTES = 256 * 1024  # JPEG keeps EXIF in APP1 (at most 64 KiB) before the pixels; PNG and WebP near the start


def capture_date(head: bytes) -> float | None:
    """The capture time recorded in an image file's EXIF, given the file's first EXIF_HEAD_BYTES:
    DateTimeOriginal (with OffsetTimeOriginal when present, else local time), else DateTime; None when the
    file has neither, or they do not parse. Nothing is decoded."""
    import io
    import re
    from datetime import datetime

    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as im:
            exif = im.getexif()
            detail = exif.get_ifd(0x8769)  # the Exif IFD
            stamp, offset = detail.get(0x9003), detail.get(0x9011)  # DateTimeOriginal, OffsetTimeOriginal
            if not stamp:
                stamp, offset = exif.get(0x0132), None  # DateTime
        if not isinstance(stamp, str):
            return None
        when = datetime.strptime(stamp.strip().rstrip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
        if isinstance(offset, str) and re.fullmatch(r"[+-]\d{2}:\d{2}", offset.strip()):
            when = datetime.fromisoformat(when.isoformat() + offset.strip())
        return when.timestamp()
    except Exception:  # no EXIF, a broken block, a header cut short: only the date is lost (mtime stands in)
        return None
