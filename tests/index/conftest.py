"""Fixtures for the index-build tests: real encoders (tiny CLIP, MiniLM), a counting proxy, image makers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def clip_encoder(tiny_clip_dir):
    from retrv.encoders.registry import load_encoder

    return load_encoder(f"clip:{tiny_clip_dir}", device="cpu")


@pytest.fixture(scope="session")
def minilm_encoder():
    from retrv.encoders.registry import load_encoder

    return load_encoder("text", device="cpu")


class CountingEncoder:
    """Delegates to a real encoder and counts what went through the model (counting, not mocking)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.spec, self.dim, self.modalities = inner.spec, inner.dim, inner.modalities
        self.device = getattr(inner, "device", "cpu")
        self.images = 0  # pixel tensors given to the model
        self.texts = 0  # text chunks given to the model
        self.calls = 0

    def reset(self) -> None:
        self.images = self.texts = self.calls = 0

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        self.calls += 1
        return self.inner.encode_texts(texts)

    def preprocess(self, image: Any) -> Any:
        return self.inner.preprocess(image)

    def encode_pixels(self, batch: list[Any]) -> np.ndarray:
        self.images += len(batch)
        self.calls += 1
        return self.inner.encode_pixels(batch)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.encode_pixels([self.preprocess(im) for im in images])


@pytest.fixture
def counting(clip_encoder) -> CountingEncoder:
    return CountingEncoder(clip_encoder)


@pytest.fixture
def new_store(tmp_path):
    """new_store(encoder) -> a fresh empty Store for that encoder."""
    from retrv.index.store import Store

    made = []

    def make(encoder: Any, name: str = "index"):
        store = Store.create(tmp_path / name, encoder_spec=encoder.spec, dim=encoder.dim)
        made.append(store)
        return store

    return make


def write_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    """A distinct picture per seed: a random colour field with a few blocks (JPEG, PNG, ... by suffix)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        pixels[y : y + 8, x : x + 8] = rng.integers(0, 256, 3, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Six distinct small JPEGs in photos/ and photos/sub/."""
    root = tmp_path / "photos"
    for i in range(4):
        write_photo(root / f"p{i}.jpg", seed=i)
    for i in range(4, 6):
        write_photo(root / "sub" / f"p{i}.jpg", seed=i)
    return root


@pytest.fixture(scope="session")
def make_photo():
    """make_photo(path, seed, size=(64, 48)) writes a distinct picture (format from the suffix)."""
    return write_photo
