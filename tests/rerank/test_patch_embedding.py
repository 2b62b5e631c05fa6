"""The vision patch embedding as a matmul: the same outputs, gradients and saved weights as the Conv3d."""

from __future__ import annotations

import copy

import torch

from retrv.rerank.patch_embedding import PatchProjection, linear_patch_embeddings


def _conv_model(tiny_reasoner_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(tiny_reasoner_dir), dtype="float32", use_safetensors=True)


def test_the_swapped_tower_computes_what_the_convolution_did(tiny_reasoner_dir):
    conv_model = _conv_model(tiny_reasoner_dir)
    linear_model = copy.deepcopy(conv_model)
    assert linear_patch_embeddings(linear_model) == 1
    assert isinstance(linear_model.model.visual.patch_embed.proj, PatchProjection)
    assert linear_patch_embeddings(linear_model) == 0  # nothing left to swap
    assert conv_model.state_dict().keys() == linear_model.state_dict().keys()

    embed = conv_model.model.visual.patch_embed
    patch = embed.in_channels * embed.temporal_patch_size * embed.patch_size**2
    pixels = torch.randn(4 * 16, patch)  # four 4x4-patch images
    grid = torch.tensor([[1, 4, 4]] * 4)
    outputs = []
    for model in (conv_model, linear_model):
        out = model.model.visual(pixels, grid_thw=grid)
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        out.pow(2).sum().backward()
        outputs.append((out.detach(), model.model.visual.patch_embed.proj.weight.grad.clone()))
    (conv_out, conv_grad), (linear_out, linear_grad) = outputs
    assert torch.allclose(conv_out, linear_out, atol=1e-5)
    assert conv_grad.abs().sum() > 0
    assert torch.allclose(conv_grad, linear_grad, atol=1e-4, rtol=1e-4)


def test_the_loaded_reasoner_has_it_and_saves_the_convolutions_weights(tiny_reasoner_dir, tmp_path):
    from safetensors.torch import load_file

    from retrv.rerank.checkpoint import load_reasoner

    loaded = load_reasoner(str(tiny_reasoner_dir), device="cpu")
    assert isinstance(loaded.model.model.visual.patch_embed.proj, PatchProjection)
    loaded.model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    original = load_file(tiny_reasoner_dir / "model.safetensors")
    assert saved.keys() == original.keys()
    key = next(k for k in saved if k.endswith("patch_embed.proj.weight"))
    assert saved[key].shape == original[key].shape and torch.equal(saved[key], original[key])
