"""A tiny M-BEIR-layout world of coloured squares with colour captions, written once per session."""

from __future__ import annotations

import io

import pytest

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 210, 30),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}


def _png(rgb) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (128, 128, 128))
    image.paste(Image.new("RGB", (20, 20), rgb), (6, 6))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_colour_world(root) -> None:
    """Task 0 (caption -> image) and task 3 (image -> caption) over 8 colours; each query's hard negative is
    the next colour's candidate. Dataset id 91: images are 91:0-7, captions 91:100-107."""
    from retrv.data.mbeir import MBeirCandidate, MBeirQuery, write_dataset

    names = list(COLOURS)
    images = {f"mbeir_images/colours/{c}.png": _png(rgb) for c, rgb in COLOURS.items()}
    image_cands = [
        MBeirCandidate(f"91:{i}", None, f"mbeir_images/colours/{c}.png", "image") for i, c in enumerate(names)
    ]
    text_cands = [MBeirCandidate(f"91:{100 + i}", f"a {c} square", None, "text") for i, c in enumerate(names)]
    queries = []
    for i, c in enumerate(names):
        nxt = (i + 1) % len(names)
        queries.append(
            MBeirQuery(
                f"91:{200 + i}",
                f"a photo of a {c} square",
                None,
                "text",
                [f"91:{i}"],
                [f"91:{nxt}"],
                task_id=0,
                dataset="colours_task0",
                split="train",
            )
        )
        queries.append(
            MBeirQuery(
                f"91:{300 + i}",
                None,
                f"mbeir_images/colours/{c}.png",
                "image",
                [f"91:{100 + i}"],
                [f"91:{100 + nxt}"],
                task_id=3,
                dataset="colours_task3",
                split="train",
            )
        )
    pools = {"colours_task0": image_cands, "colours_task3": text_cands}
    write_dataset(root, queries, pools, None, [], images)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning threads
    per process made a training step 50x slower (3.3 s instead of 0.04 s)."""
    from retrv.devices import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def colour_world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour-world")
    write_colour_world(root)
    return root


@pytest.fixture(scope="session")
def colour_caption_index_dir(colour_world_dir, tiny_clip_dir, tmp_path_factory):
    """An index (the tiny random CLIP) of the colour world's caption pool (91:100-107, ids = dids), as `retrv bench`
    indexes a pool: a coarse retriever for the image -> caption queries; text -> image queries find nothing in it."""
    from retrv.data.mbeir import MBeirDataset
    from retrv.index.index import Index

    root = tmp_path_factory.mktemp("colour-index") / "index"
    index = Index.open(root, create=True, encoder=f"clip:{tiny_clip_dir}", device="cpu")
    index.add_items(
        [c.to_item() for c in MBeirDataset.open(colour_world_dir, "train").candidates(dataset="colours_task3")]
    )
    return root
