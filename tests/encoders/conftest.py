"""Encoders loaded once per test run: the real MiniLM and the real `lite` encoder (both offline)."""

from __future__ import annotations

import pytest

from retrv.devices import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def encoder_cache_dir(retrv_home):
    """The lite encoder's class-embedding cache (the root conftest points RETRV_CACHE_DIR here)."""
    return retrv_home / "cache"


@pytest.fixture(scope="session")
def minilm():
    from retrv.encoders.registry import load_encoder

    with one_torch_thread():
        return load_encoder("text", device="cpu")


@pytest.fixture(scope="session")
def lite(encoder_cache_dir):
    from retrv.encoders.registry import load_encoder

    with one_torch_thread():
        return load_encoder("lite", device="cpu")


@pytest.fixture(scope="session")
def photo_vectors(lite, sample_photos_dir):
    """{file name: lite vector} for the 7 real sample photos."""
    from PIL import Image

    names = sorted(p.name for p in sample_photos_dir.iterdir())
    with one_torch_thread():
        vectors = lite.encode_images([Image.open(sample_photos_dir / n) for n in names])
    return dict(zip(names, vectors))
