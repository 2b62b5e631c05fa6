"""`retrv train encoder` on tiny CLIP/SigLIP models and a generated world of coloured squares."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from retrv.errors import DataError
from retrv.train.config import EncoderTrainConfig
from retrv.train.encoder import (
    ContrastiveCollator,
    contrastive_loss,
    load_base,
    load_pairs,
    set_trainable,
    train_encoder,
)
from retrv.train.loop import DataIssues, latest_checkpoint

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


def _config(tmp_path, data, base, name="out", **kw):
    args = dict(
        out=str(tmp_path / name),
        data=str(data),
        base=str(base),
        max_steps=20,
        batch_size=8,
        lr=5e-3,
        weight_decay=0.0,
        warmup_steps=0,
        lr_schedule="constant",
        save_every=0,
        device="cpu",
    )
    args.update(kw)
    return EncoderTrainConfig(**args)


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _text_to_image_accuracy(spec, world):
    from PIL import Image

    from retrv.encoders.registry import load_encoder

    enc = load_encoder(spec)
    texts = enc.encode_texts([f"a photo of a {c} square" for c in COLOURS])
    images = enc.encode_images([Image.open(world / f"mbeir_images/colours/{c}.png") for c in COLOURS])
    return float((np.argmax(texts @ images.T, axis=1) == np.arange(len(COLOURS))).mean())


def test_training_lowers_the_loss_changes_every_weight_and_loads_as_clip_dir(tmp_path, tiny_clip_dir, colour_world_dir):
    summary = train_encoder(_config(tmp_path, colour_world_dir, tiny_clip_dir))
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert {"loss", "lr", "accuracy", "temperature"} <= set(rows[0])
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.25 * first
    assert summary.examples == 16 and summary.data_issues == []

    before, after = _weights(tiny_clip_dir), _weights(out)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if "position_ids" not in k and torch.equal(before[k], after[k])]
    assert unchanged == []  # every trainable tensor moved (weight decay 0: only gradients can move them)

    # The output directory is an encoder spec, and it retrieves better than the base did.
    assert _text_to_image_accuracy(f"clip:{tiny_clip_dir}", colour_world_dir) <= 0.25
    assert _text_to_image_accuracy(f"clip:{out}", colour_world_dir) >= 0.625
    record = json.loads((out / "retrv-train.json").read_text())
    assert record["steps"] == 20 and record["examples"] == 16


def test_freezing_the_vision_tower_keeps_it_exact(tmp_path, tiny_siglip_dir, colour_world_dir):
    # SigLIP with its own sigmoid loss, so logit_bias trains too.
    train_encoder(_config(tmp_path, colour_world_dir, tiny_siglip_dir, max_steps=4, freeze_vision=True, loss="sigmoid"))
    before, after = _weights(tiny_siglip_dir), _weights(tmp_path / "out")
    vision = [k for k in before if k.startswith("vision_model.")]
    rest = [k for k in before if not k.startswith("vision_model.") and "position_ids" not in k]
    assert vision and rest
    assert all(torch.equal(before[k], after[k]) for k in vision)
    assert [k for k in rest if torch.equal(before[k], after[k])] == []
    assert not torch.equal(before["logit_bias"], after["logit_bias"])


def test_infonce_freezes_siglip_bias_and_fixed_temperature_stays(tmp_path, tiny_siglip_dir):
    enc = load_base(_config(tmp_path, "unused", tiny_siglip_dir))
    set_trainable(enc.model, _config(tmp_path, "unused", tiny_siglip_dir, learn_temperature=False))
    assert not enc.model.logit_bias.requires_grad and not enc.model.logit_scale.requires_grad
    assert enc.model.text_model.head.weight.requires_grad


def test_resume_from_a_mid_run_checkpoint_gives_the_same_weights(tmp_path, tiny_clip_dir, colour_world_dir):
    kw = dict(max_steps=6, save_every=2, batch_size=4, lr_schedule="cosine", warmup_steps=1)
    train_encoder(_config(tmp_path, colour_world_dir, tiny_clip_dir, "full", **kw))

    class Interrupt(Exception):
        pass

    def crash_at_step_5(event):
        if event.stage == "train" and event.done == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_encoder(_config(tmp_path, colour_world_dir, tiny_clip_dir, "cut", **kw), progress=crash_at_step_5)
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000004"
    summary = train_encoder(_config(tmp_path, colour_world_dir, tiny_clip_dir, "cut", resume=True, **kw))
    assert summary.start_step == 4
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6)
    losses = [
        [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("full", "cut")
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_grad_accumulation_approximates_one_big_batch(tmp_path, tiny_clip_dir, colour_world_dir):
    """2 micro-batches of B (each loss / 2) vs one batch of 2B over the same 8 pairs.

    Not equal, by design of contrastive losses: in the big batch each query is contrasted with all 2B
    positives (+ hard negatives), in a micro-batch with only B, so the softmax denominators differ.
    The gradients still point the same way, and they are closer to each other than to a batch of B alone.
    """
    cfg = _config(tmp_path, colour_world_dir, tiny_clip_dir, hard_negatives=1)
    issues = DataIssues()
    pairs = load_pairs(colour_world_dir, hard_negatives=1, issues=issues)[:8]
    enc = load_base(cfg)
    set_trainable(enc.model, cfg)
    collate = ContrastiveCollator(enc, issues)

    def grad(batches, scale):
        enc.model.zero_grad()
        for b in batches:
            (contrastive_loss(enc.model, collate(b))[0] * scale).backward()
        return torch.cat([p.grad.reshape(-1) for p in enc.model.parameters() if p.grad is not None])

    big = grad([pairs], 1.0)
    accum = grad([pairs[:4], pairs[4:]], 0.5)
    half = grad([pairs[:4]], 1.0)
    cos = torch.nn.functional.cosine_similarity
    assert cos(big, accum, dim=0) > 0.9
    assert cos(big, accum, dim=0) > cos(big, half, dim=0)
    assert not torch.allclose(big, accum)


def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path, tiny_clip_dir, colour_world_dir):
    world = tmp_path / "world"
    shutil.copytree(colour_world_dir, world)
    qfile = world / "query/train/mbeir_colours_task0_train.jsonl"
    good = qfile.read_text().splitlines()
    missing = json.loads(good[0]) | {
        "qid": "91:900",
        "query_txt": None,
        "query_img_path": "mbeir_images/colours/nope.png",
        "query_modality": "image",
    }
    not_in_pool = json.loads(good[1]) | {"qid": "91:901", "pos_cand_list": ["91:77"]}
    qfile.write_text(
        "\n".join([*good, '{"qid": "91:902", "query_txt": ', json.dumps(missing), json.dumps(not_in_pool)]) + "\n"
    )
    (world / "mbeir_images/colours/white.png").write_bytes(b"not a png")  # undecodable at batch time
    events = []
    summary = train_encoder(_config(tmp_path, world, tiny_clip_dir, max_steps=3), progress=events.append)
    rel = "query/train/mbeir_colours_task0_train.jsonl"
    found = {str(i) for i in summary.data_issues}
    assert any(s.startswith(f"{rel}:9: malformed JSON") for s in found)
    assert any(s.startswith(f"{rel}:10: image not found") for s in found)
    assert any(s.startswith(f"{rel}:11: no positive of 91:901") for s in found)
    assert any("cannot read image" in s and "white.png" in s for s in found)
    assert summary.examples == 16  # the 16 good pairs (white's pairs drop only when a batch meets them)
    assert summary.steps == 3
    assert sum(e.stage == "data" and e.message.startswith("skipped") for e in events) == len(summary.data_issues)
    record = json.loads((tmp_path / "out" / "retrv-train.json").read_text())
    assert len(record["skipped"]) == len(summary.data_issues)


def test_empty_or_all_bad_dataset_is_an_error(tmp_path, tiny_clip_dir, colour_world_dir):
    world = tmp_path / "world"
    shutil.copytree(colour_world_dir, world)
    for f in (world / "query/train").iterdir():
        f.write_text("")
    with pytest.raises(DataError, match="no usable training pairs"):
        train_encoder(_config(tmp_path, world, tiny_clip_dir))
    (world / "query/train/mbeir_colours_task0_train.jsonl").write_text("not json\n")
    with pytest.raises(DataError, match="1 problems reported"):
        train_encoder(_config(tmp_path, world, tiny_clip_dir))
    with pytest.raises(DataError, match="no query/train"):
        train_encoder(_config(tmp_path, tmp_path / "nowhere", tiny_clip_dir))
