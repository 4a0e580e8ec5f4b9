"""Exact resume: N steps straight equal N/2 steps, a checkpoint, a new process state, and N/2 more."""
from __future__ import annotations

import torch

from fastseg.engine.checkpoint import LATEST_NAME, load_checkpoint
from fastseg.engine.logging import read_log
from fastseg.engine.trainer import Trainer

STEPS = 4


def _train(config, output_dir, resume=None, stop_at=None):
    trainer = Trainer(config, output_dir, resume=resume)
    trainer.train(stop_at)
    return load_checkpoint(output_dir / LATEST_NAME)


def test_resume_continues_as_the_uninterrupted_run(tmp_path, make_tiny_config):
    # Dropout on, so the global RNG's restoration matters too. The straight run loads in the main
    # process, the interrupted one with 2 workers: augmentation must not depend on who loads a sample.
    config = make_tiny_config(f"train.iterations={STEPS}", "model.options.dropout=0.1")
    straight = _train(dict(config, train={**config["train"], "workers": 0}), tmp_path / "straight")

    config = dict(config, train={**config["train"], "workers": 2})
    first = _train(config, tmp_path / "resumed", stop_at=STEPS // 2)
    assert first["iteration"] == STEPS // 2
    torch.manual_seed(12345)  # disturb the process's RNG: the checkpoint must restore it
    resumed = _train(config, tmp_path / "resumed", resume=tmp_path / "resumed" / LATEST_NAME)
    assert resumed["iteration"] == straight["iteration"] == STEPS
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=f"parameter {name}")
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)
    straight_log = read_log(tmp_path / "straight" / "log.jsonl", "train")
    resumed_log = read_log(tmp_path / "resumed" / "log.jsonl", "train")
    assert [r["iter"] for r in resumed_log] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in straight_log]
    assert [r["lr"] for r in resumed_log] == [r["lr"] for r in straight_log]
    assert len({r["loss"] for r in straight_log}) == STEPS  # the steps really differ
