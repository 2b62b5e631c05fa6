"""Inline terminal thumbnails for search results.

Three ways a terminal can draw pixels at the cursor:

- kitty: kitty's graphics protocol (also spoken by Ghostty). A PNG is sent base64-encoded in APC escapes
  (``ESC _ G ... ESC \\``) of at most 4096 base64 characters each, the ``m`` key saying whether more follow.
- iterm2: iTerm2's inline-image protocol (also spoken by WezTerm). The whole PNG, base64-encoded, in one OSC 1337
  ``File=`` escape ended by BEL.
- sixel: DEC sixel graphics (foot, mlterm, mintty, contour, xterm built with it, ...). The image is quantized to at
  most 256 palette colours and drawn in bands six pixels high, one pass per colour in each band.

`detect_protocol` decides from the environment alone, without querying the terminal (a query needs the tty in raw
mode and a reply that may never come): terminal-specific variables first, then the terminal's name in TERM. Inside
tmux or screen it answers None.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

PROTOCOLS = ("kitty", "iterm2", "sixel")

KITTY_CHUNK = 4096  # base64 characters per escape; a multiple of 4, so every chunk but the last decodes alone
SIXEL_COLORS = 256  # palette registers most sixel terminals offer
CELL_ASPECT = 2.0  # a terminal cell is about twice as tall as it is wide

_SIXEL_TERMS = frozenset({"foot", "foot-extra", "mlterm", "yaft-256color"})


def detect_protocol(env: Mapping[str, str]) -> str | None:
    """The inline-image protocol the terminal speaks, judged by `env` (e.g. `os.environ`), or None."""
    term = env.get("TERM", "")
    program = env.get("TERM_PROGRAM", "")
    # A multiplexer owns the screen: images must be wrapped in its passthrough escapes, which are often disabled
    # (tmux's allow-passthrough is off by default) and do not survive redraws or pane switches, and the variables
    # inherited from the outer terminal may name one the client is no longer attached to. Text only, then.
    if env.get("TMUX") or term.startswith(("screen", "tmux")):
        return None
    if term in ("xterm-kitty", "xterm-ghostty") or env.get("KITTY_WINDOW_ID") or program == "ghostty":
        return "kitty"
    if program in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    if term in _SIXEL_TERMS or "sixel" in term or program in ("mintty", "contour"):
        return "sixel"
    return None


def thumbnail(path: str, max_px: int) -> Image.Image:
    """The image at `path` as RGB, shrunk (never enlarged) to fit `max_px` × `max_px`, aspect kept.

    Raises `retrv.scan.SkipFile` when the file cannot be read as an image."""
    from retrv.images import load_image

    if max_px < 1:
        raise ValueError(f"max_px must be at least 1, got {max_px}")
    image = load_image(path)
    image.thumbnail((max_px, max_px))
    return image


def encode(image: Image.Image, protocol: str, *, cells: tuple[int, int] | None = None) -> str:
    """The escape sequence that draws `image` at the cursor in `protocol` (one of `PROTOCOLS`).

    `cells` is a box of (columns, rows) the image is scaled to fit, aspect kept; None draws it at its pixel size.
    Sixel has no such scaling and ignores it."""
    if protocol == "kitty":
        return _kitty(_png(image), image.size, cells)
    if protocol == "iterm2":
        return _iterm2(_png(image), cells)
    if protocol == "sixel":
        return _sixel(image)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def render_preview(path: str, protocol: str, *, max_px: int = 256, cells: tuple[int, int] | None = (24, 12)) -> str:
    """A thumbnail of the image at `path` drawn in `protocol`, followed by a newline."""
    return encode(thumbnail(path, max_px), protocol, cells=cells) + "\n"


def _png(image: Image.Image) -> bytes:
    from retrv.images import to_rgb

    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):  # what PNG stores as is; the rest goes to RGB
        image = to_rgb(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _kitty(png: bytes, size: tuple[int, int], cells: tuple[int, int] | None) -> str:
    keys = "f=100,a=T,q=2"
    if cells is not None:
        # Given both c and r, kitty stretches the image to fill exactly that many cells. Naming only the dimension
        # that limits the fit lets kitty derive the other from the image's own aspect, using its real cell size.
        cols, rows = cells
        width, height = size
        if width * rows * CELL_ASPECT >= height * cols:
            keys += f",c={cols}"
        else:
            keys += f",r={rows}"
    data = base64.standard_b64encode(png).decode("ascii")
    chunks = [data[i : i + KITTY_CHUNK] for i in range(0, len(data), KITTY_CHUNK)] or [""]
    out = []
    for i, chunk in enumerate(chunks):
        more = int(i < len(chunks) - 1)
        head = f"{keys},m={more}" if i == 0 else f"m={more}"
        out.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(out)


def _iterm2(png: bytes, cells: tuple[int, int] | None) -> str:
    args = f"inline=1;size={len(png)};preserveAspectRatio=1"
    if cells is not None:
        args += f";width={cells[0]};height={cells[1]}"  # bare numbers count character cells
    return f"\x1b]1337;File={args}:{base64.standard_b64encode(png).decode('ascii')}\x07"


def _quantize(image: Image.Image) -> Image.Image:
    """`image` as a palette image of at most `SIXEL_COLORS` colours, transparency laid over white."""
    from PIL import Image

    from retrv.images import to_rgb

    # Fast octree: about a millisecond for a 256-pixel thumbnail where median cut takes half a second, and no worse.
    return to_rgb(image).quantize(colors=SIXEL_COLORS, method=Image.Quantize.FASTOCTREE)


def _sixel(image: Image.Image) -> str:
    import numpy as np

    quantized = _quantize(image)
    index = np.asarray(quantized, dtype=np.int16)
    height, width = index.shape
    palette = np.asarray(quantized.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    used = np.unique(index)
    percent = (palette[used] * 100 + 127) // 255  # sixel colours are given in percent of full intensity

    out = [f'\x1bPq"1;1;{width};{height}']
    out += [f"#{i};2;{r};{g};{b}" for i, (r, g, b) in zip(used.tolist(), percent.tolist())]
    weights = (1 << np.arange(6, dtype=np.int16))[:, None]  # the top row of a band is the lowest bit
    for top in range(0, height, 6):
        band = index[top : top + 6]
        colors = np.unique(band)
        bits = ((band[None] == colors[:, None, None]) * weights[None, : len(band)]).sum(axis=1)
        out.append(_sixel_band(colors, bits))
        out.append("-" if top + 6 < height else "")
    out.append("\x1b\\")
    return "".join(out)


def _sixel_band(colors: np.ndarray, bits: np.ndarray) -> str:
    """One band: a pass per colour (`bits[k]` is colour `colors[k]`'s six-bit column masks) joined by `$`.

    Each pass is a sixel character per column, runs of four or more written `!N<char>`, and nothing after its last
    painted column."""
    import numpy as np

    n, width = bits.shape
    change = np.ones((n, width), dtype=bool)
    change[:, 1:] = bits[:, 1:] != bits[:, :-1]
    starts = np.flatnonzero(change)  # every row starts a run, so no run spans two passes
    lengths = np.diff(np.append(starts, n * width))
    rows, values = starts // width, bits.ravel()[starts]
    first = starts % width == 0
    last = np.append(rows[1:] != rows[:-1], True)
    keep = ~(last & (values == 0))  # each pass paints something, so only a trailing blank run goes
    names = colors.tolist()
    tokens = []
    for is_first, row, value, length in zip(
        first[keep].tolist(), rows[keep].tolist(), values[keep].tolist(), lengths[keep].tolist()
    ):
        if is_first:
            tokens.append(f"$#{names[row]}")
        char = chr(63 + value)
        tokens.append(f"!{length}{char}" if length >= 4 else char * length)
    return "".join(tokens)[1:]
