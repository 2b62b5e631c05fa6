"""lite: the real EfficientNet-Lite0 x MiniLM encoder over the real sample photos (no download)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

# Queries whose photo the lite encoder really ranks first among the 7 (the astronaut is not one:
# the classifier sees a helmet or a barbell there, and it ties with the rocket).
OBVIOUS = {
    "a cup of coffee": "coffee.jpg",
    "a rocket": "rocket.jpg",
    "a cat": "chelsea.jpg",
    "a flower": "flower.jpg",
    "a temple": "china.jpg",
    "a woman in uniform": "grace_hopper.jpg",
    "espresso": "coffee.jpg",
}


def test_shape_spec_and_normalisation(lite, photo_vectors):
    assert lite.spec == "lite" and lite.dim == 384 and lite.device == "cpu"
    assert lite.modalities == frozenset({"text", "image"})
    vectors = np.stack(list(photo_vectors.values()))
    assert vectors.shape == (7, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("query", "photo"), OBVIOUS.items())
def test_obvious_queries_rank_their_photo_first(lite, photo_vectors, query, photo):
    names = list(photo_vectors)
    scores = np.stack([photo_vectors[n] for n in names]) @ lite.encode_texts([query])[0]
    ranking = [names[i] for i in np.argsort(-scores)]
    assert ranking[0] == photo, f"{query!r}: {ranking}"
    assert scores.max() - np.sort(scores)[-2] > 0.05  # first by a margin, not a tie


def test_queries_embed_in_the_minilm_space(lite, minilm):
    np.testing.assert_allclose(lite.encode_texts(["a rocket"]), minilm.encode_texts(["a rocket"]), atol=1e-6)


def test_preprocess_crops_scales_and_is_deterministic(lite, sample_photos_dir):
    photo = Image.open(sample_photos_dir / "rocket.jpg")
    pixels = lite.preprocess(photo)
    assert tuple(pixels.shape) == (3, 224, 224) and str(pixels.dtype) == "torch.float32"
    assert -1.0 <= float(pixels.min()) < -0.5 and 0.5 < float(pixels.max()) <= 1.0
    assert bool((pixels == lite.preprocess(photo)).all())
    for odd in (photo.convert("L"), photo.convert("RGBA"), Image.new("RGB", (900, 12), "white")):
        assert tuple(lite.preprocess(odd).shape) == (3, 224, 224)
    np.testing.assert_allclose(lite.encode_pixels([pixels]), lite.encode_images([photo]), atol=1e-6)


def test_batched_equals_one_by_one(lite, sample_photos_dir):
    photos = [Image.open(sample_photos_dir / n) for n in ("coffee.jpg", "flower.jpg", "china.jpg")]
    pixels = [lite.preprocess(p) for p in photos]
    singles = np.stack([lite.encode_pixels([p])[0] for p in pixels])
    lite.batch_size = 2
    try:
        np.testing.assert_allclose(lite.encode_pixels(pixels), singles, atol=1e-5)
    finally:
        lite.batch_size = 32


def test_class_embeddings_are_cached_on_disk(lite, encoder_cache_dir, monkeypatch):
    from retrv.encoders import lite as lite_module

    files = list((encoder_cache_dir / "lite").glob("classes-*.npy"))
    assert len(files) == 1 and np.load(files[0]).shape == (1000, 384)
    monkeypatch.setattr(lite_module, "_class_embeddings", {})  # a new process: only the disk cache is left
    names = lite_module.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench"
    monkeypatch.setattr(
        lite.text_encoder, "encode_texts", lambda *a, **k: pytest.fail("recomputed despite the disk cache")
    )
    cached = lite_module.class_embeddings(lite.text_encoder, names)
    np.testing.assert_allclose(cached, lite.class_vectors.numpy(), atol=0)
