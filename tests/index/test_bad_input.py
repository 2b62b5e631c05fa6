"""Bad input: every case is skipped with its reason, the rest is indexed, the build returns normally."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from retrv import scan as reasons
from retrv.images import load_image, pil_limits
from retrv.index.build import build_index
from retrv.items import file_item_id as item_id


@pytest.fixture
def folder(tmp_path, make_photo):
    """A folder holding one good photo; each test adds its bad file."""
    root = tmp_path / "in"
    make_photo(root / "good.jpg", seed=7)
    return root


def _build(store, encoder, root, **options):
    report = build_index(store, encoder, [root], **options)
    assert str(root / "good.jpg") in store.file_states()  # the good file always makes it
    return report


def _only_skip(report):
    assert len(report.skipped) == 1, report.skipped
    return report.skipped[0]


def test_truncated_jpeg(folder, counting, new_store, make_photo):
    data = make_photo(folder / "whole.jpg", seed=3, size=(320, 240)).read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    report = _build(new_store(counting), counting, folder)
    skip = _only_skip(report)
    assert (skip.path, skip.reason) == (str(folder / "cut.jpg"), reasons.CORRUPT_IMAGE)
    assert "truncated" in skip.detail
    assert (report.added, report.encoded) == (1, 1)


def test_zero_byte_png(folder, counting, new_store):
    (folder / "zero.png").write_bytes(b"")
    skip = _only_skip(_build(new_store(counting), counting, folder))
    assert (skip.path, skip.reason) == (str(folder / "zero.png"), reasons.EMPTY_FILE)


def test_text_saved_as_jpg(folder, counting, new_store):
    (folder / "notes.jpg").write_text("this is not a picture\n")
    skip = _only_skip(_build(new_store(counting), counting, folder))
    assert (skip.path, skip.reason) == (str(folder / "notes.jpg"), reasons.NOT_AN_IMAGE)


def test_decompression_bomb_is_refused_before_decoding(folder, counting, new_store):
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")  # 100 megapixels in 12 kB
    Image.new("1", (1200, 1000)).save(folder / "slightly_big.png")  # 1.2 MP: PIL's warning range for a 1 MP cap
    saved_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _build(new_store(counting), counting, folder, max_megapixels=1.0)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert saved_limit == Image.MAX_IMAGE_PIXELS  # the build's own limit does not leak
    assert sorted((s.path, s.reason) for s in report.skipped) == [
        (str(folder / "bomb.png"), reasons.IMAGE_TOO_LARGE),
        (str(folder / "slightly_big.png"), reasons.IMAGE_TOO_LARGE),
    ]
    with pytest.raises(reasons.SkipFile, match=r"1200x1000 is 1.2 megapixels, over max_megapixels=1"):
        load_image(folder / "slightly_big.png", max_megapixels=1.0)  # our own check, where PIL's does not fire
    with pil_limits(1.0), pytest.raises(reasons.SkipFile, match="exceeds limit"):
        load_image(folder / "bomb.png")  # PIL's check under the build's limits: an error, not a warning
    # With the default cap the 1.2 MP image is fine.
    assert load_image(folder / "slightly_big.png", max_megapixels=64.0).size == (1200, 1000)


def test_latin1_text_is_not_utf8(folder, counting, new_store):
    (folder / "café.txt").write_bytes("Crème brûlée à la française".encode("latin-1"))
    skip = _only_skip(_build(new_store(counting), counting, folder))
    assert (skip.path, skip.reason) == (str(folder / "café.txt"), reasons.NOT_UTF8)


def test_empty_and_blank_text(folder, counting, new_store):
    (folder / "empty.md").write_bytes(b"")
    (folder / "blank.txt").write_text(" \n\n\t \n")
    report = _build(new_store(counting), counting, folder)
    assert report.skipped_by_reason() == {reasons.EMPTY_FILE: 2}


def test_bom_is_dropped_and_huge_text_is_capped(folder, counting, new_store):
    (folder / "bom.txt").write_bytes(b"\xef\xbb\xbfHello with a BOM")
    # 60 ASCII bytes then "é" (2 bytes) across the 61-byte cap, then more text.
    (folder / "huge.txt").write_bytes(b"a" * 60 + "é".encode() + b" tail that is never read" * 1000)
    store = new_store(counting)
    report = _build(store, counting, folder, max_text_bytes=61)
    assert report.skipped == [] and report.added == 3
    bom, huge = store.get([item_id(str(folder / "bom.txt")), item_id(str(folder / "huge.txt"))])
    assert bom.text == "Hello with a BOM"
    assert huge.text == "a" * 60
    assert huge.size == os.stat(folder / "huge.txt").st_size  # the row records the whole file


def test_broken_symlink(folder, counting, new_store):
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    skip = _only_skip(_build(new_store(counting), counting, folder))
    assert (skip.path, skip.reason) == (str(folder / "dangling.jpg"), reasons.BROKEN_SYMLINK)


def test_symlink_loops(folder, counting, new_store, make_photo):
    make_photo(folder / "sub" / "inner.jpg", seed=8)
    os.symlink("..", folder / "sub" / "up")  # sub/up -> folder: walking it would never end
    os.symlink("self.jpg", folder / "self.jpg")  # a link to itself
    report = _build(new_store(counting), counting, folder)
    assert sorted((s.path, s.reason) for s in report.skipped) == [
        (str(folder / "self.jpg"), reasons.SYMLINK_LOOP),
        (str(folder / "sub" / "up"), reasons.SYMLINK_LOOP),
    ]
    assert report.added == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(folder, counting, new_store, make_photo):
    locked = make_photo(folder / "locked.jpg", seed=9)
    locked.chmod(0)
    try:
        skip = _only_skip(_build(new_store(counting), counting, folder))
    finally:
        locked.chmod(0o644)
    assert (skip.path, skip.reason) == (str(locked), reasons.PERMISSION_DENIED)


def test_file_deleted_between_scan_and_read(folder, counting, new_store, make_photo):
    doomed = make_photo(folder / "doomed.jpg", seed=10)

    def delete_after_scan(event):
        if event.stage == "scan" and event.total is not None:
            doomed.unlink()

    report = _build(new_store(counting), counting, folder, progress=delete_after_scan)
    skip = _only_skip(report)
    assert (skip.path, skip.reason) == (str(doomed), reasons.VANISHED)
    assert report.added == 1


def test_fifo_named_like_an_image_is_not_opened(folder, counting, new_store):
    os.mkfifo(folder / "pipe.jpg")
    skip = _only_skip(_build(new_store(counting), counting, folder))
    assert (skip.path, skip.reason) == (str(folder / "pipe.jpg"), reasons.NOT_REGULAR)


def test_file_that_turns_bad_loses_its_row(folder, counting, new_store, make_photo):
    store = new_store(counting)
    make_photo(folder / "later_broken.png", seed=11)
    assert _build(store, counting, folder).added == 2
    (folder / "later_broken.png").write_bytes(b"garbage" * 10)
    report = _build(store, counting, folder)
    assert _only_skip(report).reason == reasons.NOT_AN_IMAGE
    assert (report.removed, report.unchanged) == (1, 1) and store.count() == 1


# ---- decoding: every mode to RGB, first frame, EXIF orientation ---------------------------------------------


def _pixel(path, xy=(0, 0)):
    im = load_image(path)
    assert im.mode == "RGB"
    return im.getpixel(xy)


def test_modes_convert_to_rgb(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "clear.png")  # transparent: white
    Image.new("LA", (8, 8), (0, 255)).save(tmp_path / "la.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    Image.new("1", (8, 8), 1).save(tmp_path / "bw.bmp")
    Image.new("F", (8, 8), 3.5).save(tmp_path / "float.tif")
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    sixteen.save(tmp_path / "deep.png")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    pal.save(tmp_path / "pal_clear.gif", transparency=1)

    assert _pixel(tmp_path / "clear.png") == (255, 255, 255)
    assert _pixel(tmp_path / "la.png") == (0, 0, 0)
    assert _pixel(tmp_path / "cmyk.tif") == (255, 255, 255)
    assert _pixel(tmp_path / "bw.bmp") == (255, 255, 255)
    assert _pixel(tmp_path / "float.tif") == (0, 0, 0)  # a flat float image stretches to black
    assert _pixel(tmp_path / "deep.png", (0, 0)) == (0, 0, 0)
    assert _pixel(tmp_path / "deep.png", (1, 0)) == (255, 255, 255)
    assert _pixel(tmp_path / "pal.png") == (0, 200, 0)
    assert _pixel(tmp_path / "pal_clear.gif") == (255, 255, 255)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert _pixel(tmp_path / "anim.gif") == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "turned.png", exif=exif)
    upright = load_image(tmp_path / "turned.png")
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 5)) == (255, 0, 0) and upright.getpixel((10, 35)) == (0, 0, 255)
