"""Session-wide fixtures: tiny random models of real architectures and real sample photos.

Everything here is built once per test run (offline, in seconds) and handed out read-only;
a test that wants to change a model copies its directory first.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RUST_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def retrv_home(tmp_path_factory) -> Path:
    """Stands in for the user's data, config and cache dirs for the whole run."""
    return tmp_path_factory.getbasetemp() / "retrv-home"


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_dirs(retrv_home):
    """Never read or write the real user's config, data or cache while testing (set before any
    session fixture loads a model, since the `lite` encoder caches into RETRV_CACHE_DIR)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRV_HOME", str(retrv_home / "data"))
        mp.setenv("RETRV_CONFIG", str(retrv_home / "config.toml"))
        mp.setenv("RETRV_CACHE_DIR", str(retrv_home / "cache"))
        yield


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from retrv.train.random_models import build_random_dual_encoder

    return build_random_dual_encoder(tmp_path_factory.mktemp("tiny-clip"), "clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    from retrv.train.random_models import build_random_dual_encoder

    return build_random_dual_encoder(tmp_path_factory.mktemp("tiny-siglip"), "siglip")


@pytest.fixture(scope="session")
def tiny_reasoner_dir(tmp_path_factory) -> Path:
    from retrv.train.random_models import build_random_vlm

    return build_random_vlm(tmp_path_factory.mktemp("tiny-reasoner"))


@pytest.fixture(scope="session")
def hub_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL saved the way the hub ships an instruct model: Qwen's own special tokens only
    (retrv's tags are plain text to it), a chat template, a preprocessor_config.json."""
    from retrv.train.random_models import DEFAULT_CORPUS, build_random_vlm

    corpus = [*DEFAULT_CORPUS, *["Please output True or False. True. False."] * 20]  # one token each, as in Qwen's
    return build_random_vlm(tmp_path_factory.mktemp("hub-vlm"), hub_layout=True, corpus=corpus)


@pytest.fixture(scope="session")
def hub_qwen3_vl_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL in the hub's layout: 32-px merged patches, interleaved M-RoPE and DeepStack features
    from both vision layers into the first two text layers."""
    from retrv.train.random_models import DEFAULT_CORPUS, build_random_vlm

    corpus = [*DEFAULT_CORPUS, *["Please output True or False. True. False."] * 20]
    return build_random_vlm(
        tmp_path_factory.mktemp("hub-qwen3-vl"), hub_layout=True, corpus=corpus, vision_depth=2, architecture="qwen3_vl"
    )


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Qwen2 text stack) with its processor: a VLM outside the Qwen-VL
    families, 16 tokens per image whatever its size."""
    from retrv.train.random_models import build_random_llava

    return build_random_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="session")
def reasoner_checkpoint(tiny_reasoner_dir, tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL with a freshly initialised ICM, saved as a retrv reasoner checkpoint."""
    import torch

    from retrv.icm.module import ICM, ICMConfig
    from retrv.rerank.checkpoint import load_reasoner, save_reasoner

    torch.manual_seed(0)
    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    hidden = loaded.model.get_input_embeddings().weight.shape[-1]
    return save_reasoner(
        loaded,
        tmp_path_factory.mktemp("ckpt") / "reasoner",
        stage="icm",
        icm=ICM(ICMConfig(hidden_size=hidden, num_heads=4)),
    )


SAMPLE_PHOTOS = {
    # file name -> (loader, what is in it)
    "coffee.jpg": "skimage:coffee",
    "chelsea.jpg": "skimage:chelsea",
    "rocket.jpg": "skimage:rocket",
    "astronaut.png": "skimage:astronaut",
    "china.jpg": "sklearn:china.jpg",
    "flower.jpg": "sklearn:flower.jpg",
    "grace_hopper.jpg": "matplotlib:grace_hopper.jpg",
}


def _load_sample(source: str):
    from PIL import Image

    lib, name = source.split(":", 1)
    if lib == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
        return Image.fromarray(arr).convert("RGB")
    if lib == "sklearn":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name))
    import matplotlib.cbook

    return Image.open(matplotlib.cbook.get_sample_data(name)).convert("RGB")


@pytest.fixture(scope="session")
def sample_photos_dir(tmp_path_factory) -> Path:
    """A folder of real photos (skimage, sklearn, matplotlib samples), written once per run."""
    root = tmp_path_factory.mktemp("photos")
    for file_name, source in SAMPLE_PHOTOS.items():
        _load_sample(source).save(root / file_name)
    return root
