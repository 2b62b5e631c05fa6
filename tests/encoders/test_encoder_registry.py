"""Spec strings, the loader's failure modes, the HF-cache route, `auto`, and the image+text combination."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from retrv.encoders.base import combine
from retrv.encoders.registry import ACCEPTED_FORMS, EncoderSpec, canonical_spec, load_encoder, parse_encoder_spec
from retrv.errors import ModelLoadError, ModelNotCachedError, RetrvError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def _put_in_hf_cache(cache: Path, repo_id: str, model_dir: Path) -> None:
    """Lay `model_dir` out the way huggingface_hub caches a downloaded repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("auto", EncoderSpec("auto")),
        (" Lite ", EncoderSpec("lite")),
        ("clip", EncoderSpec("clip", "openai/clip-vit-base-patch32")),
        ("clip:google/siglip-base-patch16-224", EncoderSpec("clip", "google/siglip-base-patch16-224")),
        ("clip:openai/clip-vit-base-patch32@3d74acf", EncoderSpec("clip", "openai/clip-vit-base-patch32", "3d74acf")),
        ("text", EncoderSpec("text", "sentence-transformers/all-MiniLM-L6-v2")),
        ("TEXT:BAAI/bge-small-en-v1.5@main", EncoderSpec("text", "BAAI/bge-small-en-v1.5", "main")),
    ],
)
def test_parse_specs(spec, expected):
    assert parse_encoder_spec(spec) == expected


def test_canonical_strings(tmp_path, monkeypatch):
    assert canonical_spec("clip") == "clip:openai/clip-vit-base-patch32"
    assert canonical_spec("clip:openai/clip-vit-base-patch32@v1") == "clip:openai/clip-vit-base-patch32@v1"
    assert canonical_spec("text") == "text:sentence-transformers/all-MiniLM-L6-v2"
    assert canonical_spec("lite") == "lite"
    (tmp_path / "models" / "my-clip").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert canonical_spec("clip:./models/my-clip") == f"clip:{tmp_path.resolve()}/models/my-clip"
    assert (
        canonical_spec("clip:models/my-clip") == f"clip:{tmp_path.resolve()}/models/my-clip"
    )  # exists: a path, not an id
    monkeypatch.setenv("HOME", str(tmp_path))
    assert canonical_spec("text:~/models/my-clip") == f"text:{tmp_path.resolve()}/models/my-clip"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "empty"),
        ("bert:foo/bar", "unknown encoder kind 'bert'"),
        ("lite:x", "'lite' takes no argument"),
        ("auto:clip", "'auto' takes no argument"),
        ("clip:", "nothing after ':'"),
        ("clip:openai/clip@", "nothing after '@'"),
        ("clip:not an id", "neither an existing directory nor a Hugging Face id"),
    ],
)
def test_bad_specs_list_the_accepted_forms(spec, why):
    with pytest.raises(RetrvError) as info:
        parse_encoder_spec(spec)
    message = str(info.value)
    assert why in message and ACCEPTED_FORMS in message and "\n" not in message


def test_missing_directory_and_non_model_directory(tmp_path):
    with pytest.raises(ModelLoadError, match=f"model directory not found: {tmp_path}/nope"):
        load_encoder(f"clip:{tmp_path}/nope", device="cpu")
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        load_encoder(f"text:{tmp_path}", device="cpu")


@pytest.mark.parametrize("spec", ["clip:someorg/not-cached", "text:someorg/not-cached@v2", "clip"])
def test_uncached_hf_id_offline_fails_at_once(spec, empty_hf_cache):
    with pytest.raises(ModelNotCachedError) as info:
        load_encoder(spec, device="cpu")
    assert info.value.why == "HF_HUB_OFFLINE is set"
    assert str(empty_hf_cache) in str(info.value) and "run once with network" in str(info.value)
    assert isinstance(info.value, ModelLoadError)


def test_unreachable_hub_is_detected_by_a_probe(empty_hf_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    with pytest.raises(ModelNotCachedError, match="the hub is unreachable"):
        load_encoder("clip:someorg/not-cached", device="cpu")


def test_an_hf_id_loads_from_the_cache_offline(tiny_siglip_dir, empty_hf_cache):
    _put_in_hf_cache(empty_hf_cache, "someorg/tiny-siglip", tiny_siglip_dir)
    enc = load_encoder("clip:someorg/tiny-siglip", device="cpu")
    assert enc.spec == "clip:someorg/tiny-siglip" and enc.model_type == "siglip"
    direct = load_encoder(f"clip:{tiny_siglip_dir}", device="cpu")
    np.testing.assert_allclose(enc.encode_texts(["a rocket"]), direct.encode_texts(["a rocket"]), atol=1e-6)
    with pytest.raises(ModelNotCachedError):  # another revision is not in the cache
        load_encoder("clip:someorg/tiny-siglip@v2", device="cpu")


def test_auto_uses_clip_when_it_is_cached(tiny_clip_dir, empty_hf_cache):
    _put_in_hf_cache(empty_hf_cache, "openai/clip-vit-base-patch32", tiny_clip_dir)
    notices: list[str] = []
    enc = load_encoder("auto", device="cpu", notify=notices.append)
    assert enc.spec == "clip:openai/clip-vit-base-patch32" and notices == []


def test_auto_falls_back_to_lite_offline_and_says_so_once(empty_hf_cache, lite):
    notices: list[str] = []
    enc = load_encoder("auto", device="cpu", notify=notices.append)
    assert enc.spec == "lite" and enc.modalities == frozenset({"text", "image"})
    assert len(notices) == 1
    assert notices[0].startswith(
        "CLIP not in the Hugging Face cache and HF_HUB_OFFLINE is set; using the offline `lite` encoder."
    )
    assert "--encoder clip:/path/to/clip" in notices[0] and "\n" not in notices[0]
    assert load_encoder("auto", device="cpu").spec == "lite"  # no notify given: nothing is printed, nothing fails


def test_combine_is_the_normalised_weighted_sum():
    rng = np.random.default_rng(0)
    image, text, candidates = (rng.normal(size=(n, 16)).astype(np.float32) for n in (3, 3, 5))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    fused = combine(image, text)
    assert fused.shape == (3, 16) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)
    # Score fusion: the fused query ranks candidates by image·c + text·c.
    expected = (image @ candidates.T + text @ candidates.T) / np.linalg.norm(image + text, axis=1, keepdims=True)
    np.testing.assert_allclose(fused @ candidates.T, expected, atol=1e-5)
    np.testing.assert_allclose(combine(image, text, image_weight=1.0), image, atol=1e-6)
    np.testing.assert_allclose(combine(image[0], text[0], image_weight=0.0), text[0], atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        combine(image, text[:2])
    with pytest.raises(ValueError, match="image_weight"):
        combine(image, text, image_weight=1.5)
