"""The shared training loop on a tiny regression model: resume, accumulation, checkpoints, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from retrv.errors import DataError, RetrvError
from retrv.train.config import EncoderTrainConfig, TrainConfig, describe
from retrv.train.loop import ShuffledBatches, latest_checkpoint, train

W_TRUE = torch.tensor([[1.0, -2.0, 0.5, 3.0]])


def _examples(n=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return [(x[i], (x[i] @ W_TRUE.T).squeeze(0)) for i in range(n)]


def _collate(items):
    return {"x": torch.stack([x for x, _ in items]), "y": torch.stack([y for _, y in items])}


def _model(dropout=0.0):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(4, 1))


def _step(model, batch):
    pred = model(batch["x"]).squeeze(-1)
    loss = torch.nn.functional.mse_loss(pred, batch["y"])  # a mean over examples: decomposes exactly
    return loss, {"abs_err": float((pred - batch["y"]).detach().abs().mean())}


def _config(tmp_path, name, **kw):
    base = dict(
        out=str(tmp_path / name),
        max_steps=12,
        batch_size=4,
        lr=0.05,
        weight_decay=0.0,
        save_every=4,
        device="cpu",
        lr_schedule="cosine",
        warmup_steps=2,
        keep_checkpoints=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, model=None, progress=None, batch_size=None):
    model = model or _model(dropout=0.2)
    stream = ShuffledBatches(_examples(), batch_size or cfg.batch_size, seed=cfg.seed, collate=_collate)
    return model, train(model, _step, stream, cfg, progress=progress)


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_falls_and_metrics_are_logged(tmp_path):
    events = []
    cfg = _config(tmp_path, "run", max_steps=30, lr=0.3)
    _, summary = _run(cfg, model=_model(), progress=events.append)
    rows = _metrics(summary.metrics_path)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert set(rows[0]) >= {"step", "loss", "lr", "seconds", "abs_err"}
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert rows[0]["lr"] == pytest.approx(0.3 / 3)  # warm-up: (0+1)/(2+1) of the peak
    assert rows[-1]["lr"] < rows[5]["lr"]  # cosine decay
    assert summary.steps == 30 and summary.final_loss == rows[-1]["loss"]
    train_events = [e for e in events if e.stage == "train"]
    assert train_events[-1].done == 30 and train_events[-1].total == 30 and "loss" in train_events[-1].message
    # checkpoints every 4 steps plus the final one; each complete
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == [f"step-{s:07d}" for s in (4, 8, 12, 16, 20, 24, 28, 30)]
    last = latest_checkpoint(tmp_path / "run")
    assert {p.name for p in last.iterdir()} == {
        "model.safetensors",
        "training_state.pt",
        "rng-0.pt",
        "trainer_state.json",
    }


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    # Dropout makes the run depend on the RNG too, so this checks that RNG state is restored.
    full_model, _ = _run(_config(tmp_path, "full"))

    class Interrupt(Exception):
        pass

    def crash_at_step_6(event):
        if event.stage == "train" and event.done == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(_config(tmp_path, "cut"), progress=crash_at_step_6)
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000004"
    assert len(_metrics(tmp_path / "cut" / "metrics.jsonl")) == 6

    with pytest.raises(RetrvError, match="--resume"):  # refuses to overwrite without --resume
        _run(_config(tmp_path, "cut"))
    resumed_model, summary = _run(_config(tmp_path, "cut", resume=True), model=_model(dropout=0.2))
    assert summary.start_step == 4 and summary.steps == 12
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    full_rows, cut_rows = _metrics(tmp_path / "full" / "metrics.jsonl"), _metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut_rows] == list(range(1, 13))  # steps 5-6 of the first attempt were replaced
    assert [r["loss"] for r in cut_rows] == [r["loss"] for r in full_rows]


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    _, summary = _run(_config(tmp_path, "fresh", resume=True, max_steps=3))
    assert summary.start_step == 0 and summary.steps == 3


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # MSE is a mean over examples, so two micro-batches of 4 (each loss / 2) give exactly the gradient of
    # one batch of 8, and ShuffledBatches puts the same 8 examples into micro-batches 2k and 2k+1.
    accum, _ = _run(_config(tmp_path, "accum", batch_size=4, grad_accum=2), model=_model())
    big, _ = _run(_config(tmp_path, "big", batch_size=8, grad_accum=1), model=_model())
    plain, _ = _run(_config(tmp_path, "plain", batch_size=4, grad_accum=1), model=_model())
    for a, b, c in zip(accum.parameters(), big.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(a, c, atol=1e-3)  # and it is not just the batch-4 run


def test_frozen_parameters_stay_put_and_nothing_trainable_is_an_error(tmp_path):
    model = _model()
    model[1].bias.requires_grad_(False)
    bias = model[1].bias.detach().clone()
    weight = model[1].weight.detach().clone()
    _run(_config(tmp_path, "frozen", max_steps=3), model=model)
    assert torch.equal(model[1].bias, bias) and not torch.equal(model[1].weight, weight)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(RetrvError, match="frozen"):
        _run(_config(tmp_path, "allfrozen", max_steps=3), model=model)


def test_empty_dataset_is_an_error():
    with pytest.raises(DataError, match="empty"):
        ShuffledBatches([], batch_size=4)


def test_shuffled_batches_resume_at_any_position():
    stream = ShuffledBatches(list(range(10)), batch_size=3, seed=7)
    assert stream.per_epoch == 3
    first = [b for _, b in zip(range(8), stream(0))]
    assert len({x for b in first[:3] for x in b}) == 9  # one epoch: no repeats
    for start in range(8):
        assert next(stream(start)) == first[start]


def test_checkpoint_pruning_keeps_the_newest(tmp_path):
    _, summary = _run(_config(tmp_path, "prune", max_steps=12, save_every=2, keep_checkpoints=2))
    names = sorted(p.name for p in (tmp_path / "prune" / "checkpoints").iterdir())
    assert names == ["step-0000010", "step-0000012"]
    assert summary.last_checkpoint.name == "step-0000012"


def test_config_validation_and_help():
    with pytest.raises(RetrvError, match="--out"):
        TrainConfig().validate()
    with pytest.raises(RetrvError, match="--grad-accum"):
        TrainConfig(out="x", grad_accum=0).validate()
    with pytest.raises(RetrvError, match="--data"):
        EncoderTrainConfig(out="x").validate()
    rows = {r.name: r for r in describe(EncoderTrainConfig)}
    assert all(r.help for r in rows.values())  # every field documents itself for the CLI
    assert rows["max_steps"].flag == "--max-steps" and rows["max_steps"].default == 200
    assert rows["data"].required and rows["base"].required and not rows["lr"].required


_TWO_PROCESS_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_loop import _collate, _examples, _model, _step
from retrv.train.config import TrainConfig
from retrv.train.loop import ShuffledBatches, train
cfg = TrainConfig(out=sys.argv[1], max_steps=6, batch_size=4, grad_accum=int(sys.argv[2]), lr=0.05, weight_decay=0.0,
                  save_every=3, device="cpu")
model = _model()
train(model, _step, ShuffledBatches(_examples(), 4, collate=_collate), cfg)
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    json.dump([x for p in model.parameters() for x in p.detach().reshape(-1).tolist()], open(sys.argv[1] + "/weights.json", "w"))
"""


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one_process_accumulating_two(tmp_path):
    """No code change for multi-process: process r takes micro-batches r, r+2, ..., and gradients are averaged,
    so 2 processes x batch 4 is the same optimisation as 1 process x 2 accumulated micro-batches of 4."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(_TWO_PROCESS_SCRIPT.format(tests=str(Path(__file__).parent)))
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "2"], check=True, capture_output=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            str(script),
            str(tmp_path / "two"),
            "1",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    one = json.loads((tmp_path / "one" / "weights.json").read_text())
    two = json.loads((tmp_path / "two" / "weights.json").read_text())
    assert one == pytest.approx(two, abs=1e-6)
    assert sorted(p.name for p in latest_checkpoint(tmp_path / "two").iterdir()) == [
        "model.safetensors",
        "rng-0.pt",
        "rng-1.pt",
        "trainer_state.json",
        "training_state.pt",
    ]


def test_a_training_state_that_is_a_pickle_is_refused_in_one_line(tmp_path):
    import pickle

    _run(_config(tmp_path, "run", max_steps=4))
    state = latest_checkpoint(tmp_path / "run") / "training_state.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    state.write_bytes(pickle.dumps({"optimizer": Payload()}))
    with pytest.raises(RetrvError, match="not a training state this retrv wrote, refused") as info:
        _run(_config(tmp_path, "run", resume=True, max_steps=6))
    assert "\n" not in str(info.value)
