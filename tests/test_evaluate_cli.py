"""python -m fastseg.evaluate: a subprocess smoke run, results equal to evaluate(), bad files named or skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastseg.engine.builders import build_dataset_from_config, build_model_from_config
from fastseg.engine.checkpoint import save_checkpoint
from fastseg.engine.config import apply_overrides, load_config
from fastseg.engine.evaluator import evaluate
from fastseg.evaluate import main

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "model.name=fcn", "model.options={output_stride: 16, channels: 16, aux_channels: 8}",
    "data.val.size=[32,64]", "data.val.length=2", "evaluate.crop_size=[32,32]", "evaluate.stride=[24,24]",
]  # fmt: skip


def write_checkpoint(path: Path, overrides=()) -> tuple[torch.nn.Module, dict]:
    """A tiny FCN ResNet-18 with random weights (BN statistics from one forward pass) and its config."""
    config = apply_overrides(load_config("default"), [*TINY, *overrides])
    model = build_model_from_config(config)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 32, 64))
    model.eval()
    save_checkpoint({"model": model.state_dict(), "config": config}, path)
    return model, config


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=120)


def test_subprocess_smoke_with_every_option(tmp_path):
    write_checkpoint(tmp_path / "ck.pt")
    output = tmp_path / "out" / "results.json"
    done = run_cli(
        "fastseg.evaluate", "--checkpoint", str(tmp_path / "ck.pt"), "--output", str(output), "--device", "cpu",
        "--mode", "slide", "--scales", "0.75", "1.0", "--flip", "--boundary", "--workers", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for text in ("road", "traffic sign", "BF@0.005diag", "mean", "aAcc", "2 images of split 'val'"):
        assert text in done.stdout
    results = json.loads(output.read_text())
    assert len(results["IoU"]) == len(results["Acc"]) == len(results["classes"]) == 9
    assert list(results["BF"]) == ["0.0005diag", "0.001875diag", "0.00375diag", "0.005diag"]
    assert results["inference"] == {"mode": "slide", "crop_size": [32, 32], "stride": [24, 24], "scales": [0.75, 1.0], "flip": True, "boundary": True}
    assert results["num_images"] == 2 and results["num_skipped"] == 0 and results["config"]["model"]["name"] == "fcn"
    for key in ("mIoU", "aAcc", "mAcc"):
        assert 0 <= results[key] <= 1


def test_results_equal_evaluate_in_process(tmp_path, capsys):
    model, config = write_checkpoint(tmp_path / "ck.pt")
    output = tmp_path / "results.json"
    argv = ["--checkpoint", str(tmp_path / "ck.pt"), "--output", str(output), "--device", "cpu", "--workers", "0",
            "--set", "data.val.length=3", "--set", "evaluate.flip=true"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(output.read_text())
    dataset = build_dataset_from_config(apply_overrides(config, ["data.val.length=3"]), "val")
    expected = evaluate(model, DataLoader(dataset, batch_size=1), num_classes=9, device="cpu", inference={"flip": True})
    assert results["num_images"] == 3 and results["inference"]["flip"] is True
    assert results["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
    assert [x is None for x in results["IoU"]] == [np.isnan(x) for x in expected["IoU"]]
    assert "mIoU" in capsys.readouterr().out


def write_folder_dataset(root: Path, corrupt: str) -> None:
    """root/val/images/{a,b,c}.png with masks; ``corrupt`` is overwritten with bytes that are no PNG."""
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"class{k}" for k in range(9)) + "\n")
    rng = np.random.default_rng(0)
    for stem, size in (("a", (32, 48)), ("b", (40, 32)), ("c", (32, 32))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "val" / "images" / f"{stem}.png")
        Image.fromarray(rng.integers(0, 9, size, dtype=np.uint8)).save(root / "val" / "masks" / f"{stem}.png")
    (root / "val" / "images" / corrupt).write_bytes(b"not a png")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path, capsys, workers):
    """Counted also when a DataLoader worker skipped it (was: the main process's count, 0 with workers)."""
    write_checkpoint(tmp_path / "ck.pt")
    write_folder_dataset(tmp_path / "data", corrupt="b.png")
    argv = ["--checkpoint", str(tmp_path / "ck.pt"), "--output", str(tmp_path / "r.json"), "--device", "cpu",
            "--workers", str(workers),
            "--set", "data.dataset=folder", "--set", f"data.root={tmp_path / 'data'}", "--set", "data.val={split: val}"]  # fmt: skip
    assert main(argv) == 2
    assert "b.png" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert main([*argv, "--skip-bad", "--boundary"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["num_skipped"] == 1 and results["classes"][0] == "class0"
    assert "1 skipped as unreadable" in capsys.readouterr().out


def test_missing_checkpoint_and_unknown_split(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"]) == 2
    assert "none.pt" in capsys.readouterr().err
    write_checkpoint(tmp_path / "ck.pt")
    assert main(["--checkpoint", str(tmp_path / "ck.pt"), "--split", "test", "--device", "cpu"]) == 2
    assert "no 'test' split" in capsys.readouterr().err
