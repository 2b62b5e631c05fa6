"""Inline thumbnails: what each protocol's escapes carry decodes back to the thumbnail's pixels, and the terminal is
recognised from its environment."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrv.cli import preview
from retrv.cli.preview import detect_protocol, encode, render_preview, thumbnail
from retrv.scan import SkipFile


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A real photo as PNG and JPEG, an RGBA image with graded transparency and a palette image with a transparent
    colour, the last two with heights that are not multiples of six."""
    from skimage import data

    root = tmp_path_factory.mktemp("preview")
    astronaut = Image.fromarray(data.astronaut())
    paths = {"png": root / "astronaut.png", "jpeg": root / "astronaut.jpg"}
    astronaut.save(paths["png"])
    astronaut.save(paths["jpeg"], quality=90)

    y, x = np.mgrid[0:45, 0:70]
    rgba = np.stack([x * 3, y * 5, (x + y) * 2, np.where(x < 35, 255, y * 5)], axis=-1).astype(np.uint8)
    paths["rgba"] = root / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])

    stripes = Image.fromarray(((x[:20, :37] // 5 + y[:20, :37] // 4) % 6).astype(np.uint8), "P")
    stripes.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 0, 0, 0, 0, 128, 128, 128])
    paths["palette"] = root / "palette.png"
    stripes.save(paths["palette"], transparency=4)
    return paths


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _kitty_chunks(seq: str) -> list[tuple[str, str]]:
    found = re.findall(r"\x1b_G([^;\x1b]*);([A-Za-z0-9+/=]*)\x1b\\", seq)
    assert "".join(f"\x1b_G{keys};{chunk}\x1b\\" for keys, chunk in found) == seq  # nothing else in between
    return found


def _iterm2_parts(seq: str) -> tuple[dict[str, str], bytes]:
    match = re.fullmatch(r"\x1b\]1337;File=([^:\x07]*):([A-Za-z0-9+/=]*)\x07", seq)
    assert match, repr(seq[:80])
    args = dict(arg.split("=", 1) for arg in match.group(1).split(";"))
    return args, base64.b64decode(match.group(2), validate=True)


def _decode_sixel(seq: str) -> tuple[np.ndarray, dict[int, tuple[int, int, int]]]:
    """A strict sixel decoder: the palette register painted at each pixel (-1 where none was) and the colours defined.
    Fails on anything unexpected: an undefined register, a pixel painted twice, a pixel outside the raster."""
    assert seq.startswith("\x1bPq") and seq.endswith("\x1b\\")
    body, pos = seq[3:-2], 0
    palette: dict[int, tuple[int, int, int]] = {}
    canvas: np.ndarray | None = None
    color, x, y = None, 0, 0

    def numbers() -> list[int]:
        nonlocal pos
        match = re.compile(r"\d+(?:;\d+)*").match(body, pos)
        assert match, f"parameters expected at {pos}"
        pos = match.end()
        return [int(n) for n in match.group().split(";")]

    def paint(char: str, count: int) -> None:
        nonlocal x
        assert canvas is not None and color is not None and color in palette
        bits = ord(char) - 63
        assert 0 <= bits < 64 and x + count <= canvas.shape[1]
        for row in range(6):
            if bits >> row & 1:
                assert y + row < canvas.shape[0], "painted below the raster"
                assert (canvas[y + row, x : x + count] == -1).all(), "pixel painted twice"
                canvas[y + row, x : x + count] = color
        x += count

    while pos < len(body):
        char = body[pos]
        pos += 1
        if char == '"':
            pan, pad, width, height = numbers()
            assert (pan, pad) == (1, 1) and canvas is None
            canvas = np.full((height, width), -1, dtype=np.int64)
        elif char == "#":
            params = numbers()
            if len(params) == 5:
                register, space, *rgb = params
                assert space == 2 and all(0 <= c <= 100 for c in rgb) and register not in palette
                palette[register] = (rgb[0], rgb[1], rgb[2])
            else:
                assert len(params) == 1
                color = params[0]
        elif char == "!":
            (count,) = numbers()
            paint(body[pos], count)
            pos += 1
        elif char == "$":
            x = 0
        elif char == "-":
            x, y = 0, y + 6
        else:
            paint(char, 1)
    assert canvas is not None
    return canvas, palette


def _assert_sixel_round_trip(image: Image.Image) -> str:
    seq = encode(image, "sixel")
    canvas, palette = _decode_sixel(seq)
    quantized = preview._quantize(image)
    expected = np.asarray(quantized).astype(np.int64)
    assert canvas.shape == expected.shape == (image.height, image.width)
    np.testing.assert_array_equal(canvas, expected)
    rgb = np.asarray(quantized.getpalette(), dtype=np.int64).reshape(-1, 3)
    assert sorted(palette) == np.unique(expected).tolist() and len(palette) <= 256
    for register, percent in palette.items():
        assert percent == tuple(np.round(rgb[register] * 100 / 255).astype(int).tolist())
    # run-length compression is applied: no sixel character repeats four times uncompressed
    assert not re.search(r"([?-~])\1{3}", seq[3:-2])
    return seq


def test_preview_thumbnail_fits_and_is_rgb(photos):
    small = thumbnail(str(photos["png"]), 100)
    assert small.size == (100, 100) and small.mode == "RGB"
    wide = thumbnail(str(photos["rgba"]), 35)
    assert wide.size == (35, 23) and wide.mode == "RGB"
    assert thumbnail(str(photos["palette"]), 1000).size == (37, 20)  # never enlarged
    with pytest.raises(ValueError):
        thumbnail(str(photos["png"]), 0)


def test_preview_kitty_chunks(photos):
    image = thumbnail(str(photos["png"]), 256)
    chunks = _kitty_chunks(encode(image, "kitty", cells=(24, 12)))
    assert len(chunks) > 2
    assert chunks[0][0] == "f=100,a=T,q=2,c=24,m=1"
    assert [keys for keys, _ in chunks[1:]] == ["m=1"] * (len(chunks) - 2) + ["m=0"]
    assert all(len(chunk) == 4096 for _, chunk in chunks[:-1]) and 0 < len(chunks[-1][1]) <= 4096
    png = base64.b64decode("".join(chunk for _, chunk in chunks), validate=True)
    np.testing.assert_array_equal(_pixels(png), np.asarray(image))


def test_preview_kitty_single_chunk_and_cells(photos):
    image = thumbnail(str(photos["palette"]), 256)
    (only,) = _kitty_chunks(encode(image, "kitty"))
    assert only[0] == "f=100,a=T,q=2,m=0"
    np.testing.assert_array_equal(_pixels(base64.b64decode(only[1])), np.asarray(image))
    # only the limiting dimension is named, so kitty keeps the aspect instead of stretching to fill both
    assert _kitty_chunks(encode(image, "kitty", cells=(24, 12)))[0][0] == "f=100,a=T,q=2,c=24,m=0"
    tall = image.transpose(Image.Transpose.TRANSPOSE)
    assert _kitty_chunks(encode(tall, "kitty", cells=(24, 12)))[0][0] == "f=100,a=T,q=2,r=12,m=0"


def test_preview_kitty_keeps_transparency(photos):
    with Image.open(photos["rgba"]) as im:
        rgba = im.copy()
    (only,) = _kitty_chunks(encode(rgba, "kitty"))
    with Image.open(io.BytesIO(base64.b64decode(only[1]))) as decoded:
        assert decoded.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(rgba))


@pytest.mark.parametrize("kind", ["png", "jpeg", "rgba"])
def test_preview_iterm2_payload(photos, kind):
    image = thumbnail(str(photos[kind]), 200)
    args, png = _iterm2_parts(encode(image, "iterm2", cells=(24, 12)))
    assert args == {"inline": "1", "size": str(len(png)), "preserveAspectRatio": "1", "width": "24", "height": "12"}
    np.testing.assert_array_equal(_pixels(png), np.asarray(image))
    args, png = _iterm2_parts(encode(image, "iterm2"))
    assert args == {"inline": "1", "size": str(len(png)), "preserveAspectRatio": "1"}


@pytest.mark.parametrize("kind", ["png", "jpeg", "rgba", "palette"])
def test_preview_sixel_round_trip(photos, kind):
    image = thumbnail(str(photos[kind]), 128)
    seq = _assert_sixel_round_trip(image)
    assert seq.startswith(f'\x1bPq"1;1;{image.width};{image.height}#')


def test_preview_sixel_unconverted_modes(photos):
    with Image.open(photos["rgba"]) as im:
        rgba = im.copy()
    with Image.open(photos["palette"]) as im:
        palette = im.copy()
    for image in (rgba, palette, palette.convert("L")):
        _assert_sixel_round_trip(image)


def test_preview_sixel_exact_bytes():
    image = Image.new("RGB", (10, 7), (255, 0, 0))
    image.paste((0, 0, 255), (0, 6, 3, 7))  # bottom row: a short blue run, then red
    seq = encode(image, "sixel")
    registers = np.asarray(preview._quantize(image))
    red, blue = int(registers[6, 9]), int(registers[6, 0])
    palette = {red: f"#{red};2;100;0;0", blue: f"#{blue};2;0;0;100"}
    bottom = {red: f"#{red}???!7@", blue: f"#{blue}@@@"}  # zero columns before a run are sent, after it not
    expected = (
        '\x1bPq"1;1;10;7'
        + "".join(palette[i] for i in sorted(palette))
        + f"#{red}!10~-"
        + "$".join(bottom[i] for i in sorted(bottom))
        + "\x1b\\"
    )
    assert seq == expected


@pytest.mark.parametrize("protocol", ["kitty", "iterm2", "sixel"])
def test_preview_render(photos, protocol):
    out = render_preview(str(photos["jpeg"]), protocol, max_px=64)
    assert out == encode(thumbnail(str(photos["jpeg"]), 64), protocol, cells=(24, 12)) + "\n"
    if protocol == "sixel":  # cells mean nothing to sixel
        assert out == render_preview(str(photos["jpeg"]), protocol, max_px=64, cells=None)


def test_preview_unknown_protocol(photos):
    image = thumbnail(str(photos["palette"]), 16)
    with pytest.raises(ValueError, match="unknown protocol"):
        encode(image, "ascii")
    with pytest.raises(ValueError, match="unknown protocol"):
        render_preview(str(photos["palette"]), "Kitty")


def test_preview_unreadable_files_skip(photos, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(photos["png"].read_bytes()[:5000])
    for path in (garbage, truncated, tmp_path / "missing.png"):
        with pytest.raises(SkipFile):
            thumbnail(str(path), 64)
        with pytest.raises(SkipFile):
            render_preview(str(path), "kitty")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TERM": "xterm-kitty"}, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "1"}, "kitty"),
        ({"TERM": "xterm-ghostty", "TERM_PROGRAM": "ghostty"}, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "ghostty"}, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, "iterm2"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "iterm2"),
        ({"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, "iterm2"),
        ({"TERM": "foot"}, "sixel"),
        ({"TERM": "foot-extra"}, "sixel"),
        ({"TERM": "mlterm"}, "sixel"),
        ({"TERM": "yaft-256color"}, "sixel"),
        ({"TERM": "xterm-sixel"}, "sixel"),
        ({"TERM": "xterm", "TERM_PROGRAM": "mintty"}, "sixel"),
        ({"TERM": "contour", "TERM_PROGRAM": "contour"}, "sixel"),
        ({"TERM": "xterm-256color"}, None),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "Apple_Terminal"}, None),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": ""}, None),
        ({}, None),
        ({"TERM": "tmux-256color", "TMUX": "/tmp/tmux-1000/default,1,0", "KITTY_WINDOW_ID": "1"}, None),
        ({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-1000/default,1,0"}, None),
        ({"TERM": "screen-256color", "TERM_PROGRAM": "WezTerm"}, None),
        ({"TERM": "tmux-256color", "LC_TERMINAL": "iTerm2"}, None),
    ],
)
def test_preview_detect_protocol(env, expected):
    assert detect_protocol(env) == expected
    assert expected is None or expected in preview.PROTOCOLS
