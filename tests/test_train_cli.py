"""CLI smoke test of ``python -m fastseg.train``: a tiny run writes config, logs, checkpoints and
prediction images, and ``--resume`` continues it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from fastseg.engine.checkpoint import LATEST_NAME, load_checkpoint
from fastseg.engine.config import load_config
from fastseg.engine.logging import read_log

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "model.options={output_stride: 16, channels: 16, aux_channels: 8}",
    "data.train={split: train, size: [48, 64], length: 6}",
    "data.val={split: val, size: [48, 64], length: 2}",
    "data.augment.crop=[32,32]",
    "train.batch_size=2", "train.workers=0", "train.log_interval=1", "train.num_predictions=2",
    "train.tensorboard=false",
]  # fmt: skip


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "fastseg.train", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_cli_writes_a_run_and_resumes(tmp_path):
    run = tmp_path / "run"
    result = _train("--output-dir", str(run), "--set", *TINY, "train.iterations=2", "--no-compile")
    assert "val mIoU" in result.stdout and f"run directory: {run}" in result.stdout
    assert "iter 2/2" in result.stderr and "it/s" in result.stderr and "ETA" in result.stderr
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["iterations"] == 2 and config["train"]["compile"] is False
    assert config["run"] == {"world_size": 1, "batch_per_rank": 2}
    assert config["model"]["name"] == load_config("default")["model"]["name"] and config["data"]["dataset"] == "synthetic"
    assert [r["iter"] for r in read_log(run / "log.jsonl", "train")] == [1, 2]
    assert load_checkpoint(run / LATEST_NAME)["iteration"] == 2
    assert (run / "checkpoint_best.pth").is_file()
    pictures = sorted(p.name for p in (run / "predictions").iterdir())
    assert pictures == [f"val_{i:04d}_{kind}.png" for i in range(2) for kind in ("labels", "mask", "overlay", "target")]

    _train("--resume", str(run), "--set", "train.iterations=3")  # the run's own config, one more iteration
    assert load_checkpoint(run / LATEST_NAME)["iteration"] == 3
    assert [r["iter"] for r in read_log(run / "log.jsonl", "train")] == [1, 2, 3]
