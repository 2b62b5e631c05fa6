"""Loading, saving and naming reasoner checkpoints (tiny Qwen2.5-VL, CPU, offline)."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import torch

from retrv.errors import ModelLoadError
from retrv.rerank.checkpoint import (
    DEFAULT_SPECIAL_TOKENS,
    ICM_WEIGHTS,
    PIXELS_PER_IMAGE_TOKEN,
    REASONER_CONFIG,
    load_reasoner,
    reasoner_id,
    save_reasoner,
)


@pytest.fixture(scope="module")
def loaded(tiny_reasoner_dir):
    return load_reasoner(str(tiny_reasoner_dir), device="cpu")


def _icm(hidden: int = 64, seed: int = 0):
    from retrv.icm.module import ICM, ICMConfig

    torch.manual_seed(seed)
    return ICM(ICMConfig(hidden_size=hidden, num_heads=4, num_layers=1, num_memory_tokens=2))


def _logits(reasoner, photo) -> torch.Tensor:
    from PIL import Image

    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a cat <answer>1</answer><|im_end|>"
    batch = reasoner.processor(text=[text], images=[Image.open(photo).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        return reasoner.model(**batch).logits


def test_load_tiny_dir_cpu_float32_with_special_tokens(loaded, tiny_reasoner_dir):
    assert loaded.device == "cpu" and loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training
    assert loaded.config.stage == "base" and loaded.config.weights == "base" and loaded.icm is None
    assert loaded.config.base_model == str(tiny_reasoner_dir.resolve())
    for role, token in DEFAULT_SPECIAL_TOKENS.items():
        ids = loaded.tokenizer.encode(f"x{token}y", add_special_tokens=False)
        assert loaded.token_id(role) in ids and token in loaded.tokenizer.get_vocab()
    assert type(loaded.processor).__name__ == "RetrvQwen2_5_VLProcessor"
    assert re.fullmatch(r"[0-9a-f]{12}", loaded.checkpoint_id)


def test_base_without_role_tokens_gets_them_deterministically(tiny_reasoner_dir, tmp_path):
    from retrv.train.random_models import REASONER_SPECIAL_TOKENS, train_byte_bpe_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_reasoner_dir, base)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (base / f).unlink()
    roles = set(DEFAULT_SPECIAL_TOKENS.values())
    train_byte_bpe_tokenizer(special_tokens=[t for t in REASONER_SPECIAL_TOKENS if t not in roles]).save_pretrained(
        base
    )

    plain = load_reasoner(str(base), device="cpu")  # an instruct model writes the tags as text: none added
    assert plain.tokenizer.convert_tokens_to_ids("<answer>") in (None, plain.tokenizer.unk_token_id)
    first, second = (load_reasoner(str(base), device="cpu", role_tokens=True) for _ in range(2))  # training
    ids = [first.token_id(role) for role in DEFAULT_SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids) and min(ids) > 0
    emb = first.model.get_input_embeddings().weight
    assert emb.shape[0] >= len(first.tokenizer)
    assert torch.equal(emb[ids], second.model.get_input_embeddings().weight[ids])
    with torch.no_grad():
        out = first.model(input_ids=torch.tensor([ids])).logits
    assert torch.isfinite(out).all()


def test_full_checkpoint_round_trip(loaded, tmp_path, sample_photos_dir):
    photo = sample_photos_dir / "chelsea.jpg"
    icm = _icm()
    out = save_reasoner(loaded, tmp_path / "sft", stage="sft", training={"lr": 1e-4}, icm=icm)
    cfg = json.loads((out / REASONER_CONFIG).read_text())
    assert cfg["stage"] == "sft" and cfg["weights"] == "full" and cfg["training"] == {"lr": 1e-4}
    assert cfg["icm"]["hidden_size"] == 64 and (out / ICM_WEIGHTS).is_file()

    back = load_reasoner(str(out), device="cpu", require_icm=True)
    assert torch.equal(_logits(back, photo), _logits(loaded, photo))
    for (name, a), (_, b) in zip(icm.state_dict().items(), back.icm.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    again = load_reasoner(str(out), device="cpu")
    assert again.checkpoint_id == back.checkpoint_id != loaded.checkpoint_id

    # changed LLM weights -> another id (same directory, re-saved)
    with torch.no_grad():
        back.model.lm_head.weight[0, 0] += 1.0
    save_reasoner(back, out, stage="sft")
    assert load_reasoner(str(out), device="cpu").checkpoint_id != back.checkpoint_id
    # changed ICM weights alone -> another id
    other = save_reasoner(loaded, tmp_path / "sft2", stage="sft", icm=_icm(seed=1))
    assert reasoner_id(other) != reasoner_id(tmp_path / "sft") and reasoner_id(other) != back.checkpoint_id


def test_icm_stage_checkpoint_reads_llm_from_base(loaded, tmp_path, sample_photos_dir):
    out = save_reasoner(loaded, tmp_path / "icm", stage="icm", icm=_icm())
    assert not list(out.glob("model*.safetensors"))  # frozen LLM: not copied
    back = load_reasoner(str(out), device="cpu", require_icm=True)
    assert back.config.weights == "base" and back.config.stage == "icm"
    photo = sample_photos_dir / "coffee.jpg"
    assert torch.equal(_logits(back, photo), _logits(loaded, photo))


def test_checkpoint_on_top_of_a_finetuned_one_keeps_its_llm(loaded, tmp_path, sample_photos_dir):
    weight = loaded.model.lm_head.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight[1, 1] += 0.5
    try:
        sft = load_reasoner(str(save_reasoner(loaded, tmp_path / "sft", stage="sft")), device="cpu")
    finally:
        with torch.no_grad():
            weight.copy_(original)
    on_top = save_reasoner(sft, tmp_path / "icm", stage="icm", icm=_icm())
    assert json.loads((on_top / REASONER_CONFIG).read_text())["base_model"] == str(tmp_path / "sft")
    photo = sample_photos_dir / "coffee.jpg"
    assert torch.equal(_logits(load_reasoner(str(on_top), device="cpu"), photo), _logits(sft, photo))
    with pytest.raises(ValueError, match="another directory"):
        save_reasoner(sft, tmp_path / "sft", stage="icm", icm=_icm())


def test_lora_checkpoint_is_merged_on_load(tiny_reasoner_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    fresh = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    peft_model = get_peft_model(
        fresh.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    ids = torch.tensor([[1, 2, 3, fresh.token_id("icm"), fresh.token_id("answer_start"), 40]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    out = save_reasoner(fresh, tmp_path / "lora", stage="sft", lora_model=peft_model)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    back = load_reasoner(str(out), device="cpu")
    assert back.config.weights == "lora"
    with torch.no_grad():
        assert torch.allclose(back.model(input_ids=ids).logits, expected, atol=1e-5)

    # an adapter saved as a pickle (.bin) is refused, not unpickled
    (out / "adapter_model.safetensors").rename(out / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match=r"no adapter_model\.safetensors") as err:
        load_reasoner(str(out), device="cpu")
    assert "\n" not in str(err.value)


def test_image_token_budget_caps_processor_and_changes_id(tiny_reasoner_dir, loaded):
    small = load_reasoner(str(tiny_reasoner_dir), device="cpu", max_image_tokens=4)
    assert small.image_processor.size["longest_edge"] == 4 * PIXELS_PER_IMAGE_TOKEN
    assert loaded.image_processor.size["longest_edge"] == 112 * 112  # already under the default budget
    assert small.checkpoint_id != loaded.checkpoint_id


def test_bad_specs_fail_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / REASONER_CONFIG).write_text("{not json")
    cases = {
        str(tmp_path / "missing"): "model directory not found",
        "./nowhere/model": "model directory not found",
        "not a valid id!": "Hugging Face id",
        "Qwen/Qwen2.5-VL-3B-Instruct@main": "HF_HUB_OFFLINE",
        str(tmp_path / "empty"): "no retrv-reasoner.json or config.json",
        str(broken): "not a valid reasoner config",
    }
    for spec, needle in cases.items():
        started = time.perf_counter()
        with pytest.raises(ModelLoadError) as err:
            load_reasoner(spec, device="cpu")
        assert needle in str(err.value) and "\n" not in str(err.value)
        assert time.perf_counter() - started < 2.0


def test_bare_base_refused_in_reason_mode(tiny_reasoner_dir):
    with pytest.raises(ModelLoadError, match="--rerank score"):
        load_reasoner(str(tiny_reasoner_dir), device="cpu", require_icm=True)


def test_a_hub_id_that_reads_like_a_missing_folder_says_so(tmp_path, monkeypatch):
    from retrv.errors import ModelLoadError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match="nor is there a directory models/mine"):
        load_reasoner("models/mine", device="cpu")
