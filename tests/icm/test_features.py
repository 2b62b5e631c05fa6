"""Full candidate tokens come from the reasoner itself: its vision tower and its token embeddings."""

from __future__ import annotations

import pytest
import torch

from retrv.errors import FeatureError
from retrv.icm.features import (
    TokenBudget,
    candidate_tokens,
    candidate_tokens_batch,
    full_tokens,
    full_tokens_batch,
    query_tokens,
)
from retrv.items import Item, Query


@pytest.fixture(scope="module")
def loaded(tiny_reasoner_dir):
    from retrv.rerank.checkpoint import load_reasoner

    return load_reasoner(str(tiny_reasoner_dir), device="cpu")


def _image(path) -> Item:
    return Item(str(path), str(path), "image", image_path=str(path))


def _vision_reference(loaded, path):
    """What the model computes for the image when it is part of an ordinary processor batch."""
    from PIL import Image

    batch = loaded.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    out = loaded.model.model.get_image_features(
        pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]
    )
    return out.pooler_output[0], batch["image_grid_thw"][0].tolist()


def test_image_tokens_are_the_vision_tower_output(loaded, sample_photos_dir):
    path = sample_photos_dir / "coffee.jpg"
    tokens = candidate_tokens(loaded.model, loaded, _image(path))
    reference, (_t, h, w) = _vision_reference(loaded, path)
    assert tokens.image_grid == (h // 2, w // 2) and tokens.n_image == (h // 2) * (w // 2) == len(tokens)
    assert tokens.text_ids == ()
    torch.testing.assert_close(tokens.embeds, reference)
    assert full_tokens(loaded.model, loaded, _image(path)).shape == (
        tokens.n_image,
        loaded.model.config.text_config.hidden_size,
    )


def test_text_tokens_are_token_embeddings(loaded):
    item = Item("t", "t", "text", text="a small red circle left of a blue square")
    tokens = candidate_tokens(loaded.model, loaded, item)
    ids = loaded.tokenizer(item.text, add_special_tokens=False)["input_ids"]
    assert list(tokens.text_ids) == ids and tokens.n_image == 0 and tokens.image_grid is None
    torch.testing.assert_close(tokens.embeds, loaded.model.get_input_embeddings()(torch.tensor(ids)))
    assert len(candidate_tokens(loaded.model, loaded, item, TokenBudget(max_text_tokens=3))) == 3


def test_batch_equals_one_by_one_and_mixed_items(loaded, sample_photos_dir):
    items = [
        _image(sample_photos_dir / "chelsea.jpg"),
        Item("t", "t", "text", text="a cup of coffee"),
        Item("b", "b", "image,text", text="a rocket", image_path=str(sample_photos_dir / "rocket.jpg")),
    ]
    batch = candidate_tokens_batch(loaded.model, loaded, items)
    for item, tokens in zip(items, batch, strict=True):
        single = candidate_tokens(loaded.model, loaded, item)
        torch.testing.assert_close(tokens.embeds, single.embeds, rtol=1e-5, atol=1e-5)
        assert (tokens.n_image, tokens.image_grid, tokens.text_ids) == (
            single.n_image,
            single.image_grid,
            single.text_ids,
        )
    both = batch[2]
    assert both.n_image > 0 and len(both) == both.n_image + len(both.text_ids)
    assert [t.shape for t in full_tokens_batch(loaded.model, loaded, items)] == [t.embeds.shape for t in batch]


def test_pixel_budget_limits_image_tokens(loaded, sample_photos_dir):
    item = _image(sample_photos_dir / "astronaut.png")
    default = candidate_tokens(loaded.model, loaded, item)
    small = candidate_tokens(loaded.model, loaded, item, TokenBudget(max_image_pixels=56 * 56))
    assert small.n_image == 4 < default.n_image  # 56x56 px = 2x2 merged tokens


def test_query_tokens_read_instruction_text_and_image(loaded, sample_photos_dir):
    q = query_tokens(
        loaded.model, loaded, Query(text="a cat", image=sample_photos_dir / "chelsea.jpg", instruction="find it")
    )
    ids = loaded.tokenizer("find it\na cat", add_special_tokens=False)["input_ids"]
    assert q.n_image > 0 and list(q.text_ids) == ids


def test_unreadable_image_is_a_clear_error(loaded, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FeatureError, match=r"broken.jpg: cannot read the image"):
        full_tokens(loaded.model, loaded, _image(bad))
