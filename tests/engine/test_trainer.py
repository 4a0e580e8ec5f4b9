"""The trainer: NaN/Inf steps skipped and stopped on, checkpoints surviving an interrupted write, logs,
flat memory."""
from __future__ import annotations

import gc
import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from fastseg.engine import checkpoint
from fastseg.engine.checkpoint import LATEST_NAME, load_checkpoint
from fastseg.engine.logging import read_log
from fastseg.engine.trainer import NonFiniteLossError, Trainer


def _inject_nan(trainer: Trainer, bad_iterations: set[int]) -> None:
    """Make the loss NaN at the given (0-based) iterations, through the model's own loss."""
    loss = trainer.bare.loss

    def nan_at(outputs, targets):
        losses = loss(outputs, targets)
        if trainer.iteration in bad_iterations:
            losses["total"] = losses["total"] * float("nan")
        return losses

    trainer.bare.loss = nan_at


def _parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.bare.named_parameters()}


def test_nan_step_is_skipped_and_logged(tmp_path, make_tiny_config):
    config = make_tiny_config("train.iterations=3", "train.max_bad_steps=2")
    trainer = Trainer(config, tmp_path)
    _inject_nan(trainer, {1})
    trainer.train(stop_at=1)
    before = _parameters(trainer)
    momentum = [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.bare.parameters()]
    trainer.train(stop_at=2)  # the NaN step: nothing moves
    for name, value in _parameters(trainer).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    for p, buf in zip(trainer.bare.parameters(), momentum):
        torch.testing.assert_close(trainer.optimizer.state[p]["momentum_buffer"], buf, rtol=0, atol=0)
        assert p.grad is None
    trainer.train()  # a finite step again: the parameters move and the streak resets
    assert any(not torch.equal(value, before[name]) for name, value in _parameters(trainer).items())
    assert trainer.bad_streak == 0
    records = read_log(tmp_path / "log.jsonl")
    assert [(r["kind"], r["iter"]) for r in records if r["kind"] != "val"] == [
        ("train", 1), ("nonfinite", 2), ("train", 2), ("nonfinite", 2), ("train", 3)
    ]  # fmt: skip
    assert records[2]["skipped"] == 1 and "loss" not in records[2]
    assert records[3]["checkpoint_skipped"] == 1, "stop_at=2 ends in the bad step: its checkpoint is not written"


def test_consecutive_nan_steps_stop_training(tmp_path, make_tiny_config):
    trainer = Trainer(make_tiny_config("train.iterations=6", "train.max_bad_steps=2"), tmp_path)
    _inject_nan(trainer, {1, 2, 3, 4, 5})
    with pytest.raises(NonFiniteLossError, match="NaN/Inf in 2 consecutive steps"):
        trainer.train()
    assert trainer.iteration == 3


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, make_tiny_config, monkeypatch):
    config = make_tiny_config("train.iterations=4", "train.checkpoint_interval=2")
    trainer = Trainer(config, tmp_path)
    trainer.train(stop_at=2)
    previous = load_checkpoint(tmp_path / LATEST_NAME)
    save = torch.save

    def killed_midway(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        f.seek(f.tell() // 2)
        f.truncate()
        raise KeyboardInterrupt  # e.g. Ctrl-C while the file is half written

    monkeypatch.setattr(checkpoint.torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.undo()
    assert trainer.iteration == 4
    state = load_checkpoint(tmp_path / LATEST_NAME)
    assert state["iteration"] == previous["iteration"] == 2
    for name, value in previous["model"].items():
        torch.testing.assert_close(state["model"][name], value, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_latest.pth", "config.yaml", "log.jsonl"]
    resumed = Trainer(config, tmp_path, resume=tmp_path / LATEST_NAME)  # and training can go on from it
    assert resumed.iteration == 2
    resumed.train()
    assert load_checkpoint(tmp_path / LATEST_NAME)["iteration"] == 4
    # Iterations 3 and 4 ran twice (before the interruption and after the resume); they are logged once.
    assert [r["iter"] for r in read_log(tmp_path / "log.jsonl", "train")] == [1, 2, 3, 4]


def test_logs_and_saved_config(tmp_path, make_tiny_config):
    pytest.importorskip("torch.utils.tensorboard", reason="the tensorboard package is not installed")
    config = make_tiny_config("train.iterations=2", "train.tensorboard=true", "train.batch_size=4")
    Trainer(config, tmp_path).train()
    records = read_log(tmp_path / "log.jsonl", "train")
    assert [r["iter"] for r in records] == [1, 2]
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in records)
    assert records[0]["lr"] == pytest.approx(0.01) and records[1]["lr"] < records[0]["lr"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    saved = load_checkpoint(tmp_path / LATEST_NAME)["config"]
    assert saved["train"]["batch_size"] == 4 and saved["run"] == {"world_size": 1, "batch_per_rank": 4}


TRACING_TENSORS = (FakeTensor, FunctionalTensor)


def _live_tensors() -> tuple[int, int]:
    """(number of live tensors, bytes of their distinct storages) after a full garbage collection."""
    gc.collect()
    # type(), not isinstance(): isinstance reads obj.__class__, and on the deprecated
    # torch.distributed.reduce_op object that raises a FutureWarning.
    # Real tensors only: fake tensors left by an earlier torch.compile in this process have no storage.
    tensors = [obj for obj in gc.get_objects()
               if issubclass(type(obj), torch.Tensor) and not issubclass(type(obj), TRACING_TENSORS)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.device.type == "cpu"}
    return len(tensors), sum(storages.values())


def test_live_tensors_stay_flat_over_a_run(tmp_path, make_tiny_config):
    """No list of tensors or autograd graph survives a log interval: the live tensors at every log record
    after the first (the optimizer's momentum buffers appear at step 1) are the same in number and bytes."""
    trainer = Trainer(make_tiny_config("train.iterations=16", "train.log_interval=4"), tmp_path)
    log = trainer._log
    snapshots = {}

    def log_and_count(scalars, kind="train"):
        log(scalars, kind=kind)
        if kind == "train":
            snapshots[trainer.iteration] = _live_tensors()

    trainer._log = log_and_count
    trainer.train()
    trainer.close()
    assert sorted(snapshots) == [4, 8, 12, 16]
    assert len(set(snapshots.values())) == 1, snapshots
