"""Faults during training: a skipped step changes nothing (BatchNorm buffers included), no checkpoint during a
non-finite streak, the final checkpoint written before the final evaluation, a torn log record, orphaned
temporary files."""
from __future__ import annotations

import json

import pytest
import torch

from fastseg.engine.checkpoint import LATEST_NAME, load_checkpoint
from fastseg.engine.logging import read_log
from fastseg.engine.trainer import Trainer
from test_trainer import _inject_nan as _nan_loss_at  # NaN loss at given iterations, after the forward pass


def _buffers(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in trainer.bare.named_buffers()}


def test_a_skipped_step_leaves_batchnorm_statistics_untouched(tmp_path, make_tiny_config):
    """Was: one NaN batch left 60 NaN running_mean/running_var tensors and val mIoU fell, with no warning."""
    trainer = Trainer(make_tiny_config("train.iterations=3", "train.max_bad_steps=2"), tmp_path)
    _nan_loss_at(trainer, {1})
    trainer.train(stop_at=1)
    before = _buffers(trainer)
    assert any("running_mean" in name for name in before)
    trainer.train(stop_at=2)  # the NaN step
    for name, value in _buffers(trainer).items():
        assert torch.equal(value, before[name]), f"{name} changed in a skipped step"
    trainer.train()  # a finite step moves them again
    assert any(not torch.equal(value, before[name]) for name, value in _buffers(trainer).items())


def test_a_nan_batch_never_reaches_the_running_statistics(tmp_path, make_tiny_config):
    trainer = Trainer(make_tiny_config("train.iterations=3", "train.max_bad_steps=2"), tmp_path)
    forward = trainer.model.forward

    def nan_images(images):
        return forward(images * float("nan") if trainer.iteration == 1 else images)

    trainer.model.forward = nan_images
    trainer.train()
    bad = [name for name, value in _buffers(trainer).items() if value.is_floating_point() and not value.isfinite().all()]
    assert bad == []
    assert load_checkpoint(tmp_path / LATEST_NAME)["iteration"] == 3


def test_no_checkpoint_is_written_during_a_non_finite_streak(tmp_path, make_tiny_config):
    """Was: a checkpoint written during a streak held 45 non-finite tensors."""
    config = make_tiny_config("train.iterations=3", "train.max_bad_steps=3", "train.checkpoint_interval=1")
    trainer = Trainer(config, tmp_path)
    _nan_loss_at(trainer, {1})
    trainer.train(stop_at=2)  # iteration 2 is bad: the checkpoint of iteration 1 stays
    assert load_checkpoint(tmp_path / LATEST_NAME)["iteration"] == 1
    skipped = [r for r in read_log(tmp_path / "log.jsonl", "nonfinite") if r.get("checkpoint_skipped")]
    assert [r["iter"] for r in skipped] == [2]
    trainer.train()
    assert load_checkpoint(tmp_path / LATEST_NAME)["iteration"] == 3


def test_non_finite_weights_are_not_saved(tmp_path, make_tiny_config):
    trainer = Trainer(make_tiny_config("train.iterations=2"), tmp_path)
    trainer.train(stop_at=1)
    with torch.no_grad():
        next(trainer.bare.parameters())[0].fill_(float("inf"))
    assert trainer.save(tmp_path / LATEST_NAME) is False
    assert load_checkpoint(tmp_path / LATEST_NAME)["iteration"] == 1


def test_the_final_checkpoint_is_written_before_the_final_evaluation(tmp_path, make_tiny_config):
    """Was: a corrupt validation image killed the run at the final evaluation, the latest checkpoint 2 iterations
    behind."""
    trainer = Trainer(make_tiny_config("train.iterations=3", "train.checkpoint_interval=0"), tmp_path)

    def corrupt_val():
        raise RuntimeError("cannot read image val/0003.png")

    trainer.evaluate = corrupt_val
    with pytest.raises(RuntimeError, match="0003.png"):
        trainer.train()
    assert load_checkpoint(tmp_path / LATEST_NAME)["iteration"] == 3


def test_the_resume_state_records_the_best_miou_of_the_evaluation_after_it(tmp_path, make_tiny_config):
    trainer = Trainer(make_tiny_config("train.iterations=2"), tmp_path)
    trainer.train()
    state = load_checkpoint(tmp_path / LATEST_NAME)
    assert state["best_mIoU"] == trainer.best_miou > -1


def test_resume_drops_a_torn_last_log_record(tmp_path, make_tiny_config, capsys):
    """Was: the disk filled while log.jsonl was appended; --resume then failed with JSONDecodeError."""
    config = make_tiny_config("train.iterations=3", "train.checkpoint_interval=2")
    Trainer(config, tmp_path).train(stop_at=2)
    log = tmp_path / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"kind": "train", "iter": 3, "ti')  # cut mid-record
    resumed = Trainer(config, tmp_path, resume=tmp_path / LATEST_NAME)
    assert "dropping the torn last record" in capsys.readouterr().err
    resumed.train()
    resumed.close()
    lines = log.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert [r["iter"] for r in read_log(log, "train")] == [1, 2, 3]


def test_a_torn_record_before_the_last_one_is_an_error(tmp_path, make_tiny_config):
    config = make_tiny_config("train.iterations=3", "train.checkpoint_interval=2")
    Trainer(config, tmp_path).train(stop_at=2)
    log = tmp_path / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0][:10], *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="log.jsonl: line 1 is not a JSON record"):
        Trainer(config, tmp_path, resume=tmp_path / LATEST_NAME)


def test_orphaned_checkpoint_temp_files_are_removed_on_start(tmp_path, make_tiny_config):
    """Was: kill -9 during checkpoint writes left 6 orphaned temporary files (153 MB)."""
    orphan = tmp_path / f".{LATEST_NAME}.k9x2ab.tmp"
    tmp_path.mkdir(exist_ok=True)
    orphan.write_bytes(b"\0" * 1024)
    Trainer(make_tiny_config("train.iterations=1"), tmp_path)
    assert not orphan.exists()


def _write_folder_split(root, split: str, stems: list[str], corrupt: str) -> None:
    """root/<split>/images/<stem>.png and masks (9 classes); image ``corrupt`` holds bytes that are no PNG."""
    from PIL import Image

    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"class{k}" for k in range(9)) + "\n")
    rng = torch.Generator().manual_seed(len(stems))
    for stem in stems:
        image = torch.randint(0, 256, (40, 48, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
        Image.fromarray(torch.randint(0, 9, (40, 48), generator=rng, dtype=torch.uint8).numpy()).save(
            root / split / "masks" / f"{stem}.png")
    (root / split / "images" / corrupt).write_bytes(b"not a png")


def test_skipped_samples_are_counted_in_the_log_with_loader_workers(tmp_path, make_tiny_config):
    """Was: --skip-bad skips were printed by the workers but never reached log.jsonl."""
    data = tmp_path / "data"
    _write_folder_split(data, "train", ["a", "b", "c", "d"], corrupt="b.png")
    _write_folder_split(data, "val", ["e", "f"], corrupt="f.png")
    config = make_tiny_config(
        "data.dataset=folder", f"data.root={data}", "data.num_classes=9", "data.train={split: train}",
        "data.val={split: val}", "train.workers=2", "train.skip_bad=true", "train.iterations=2",
        "train.batch_size=2", "train.eval_interval=2",
    )
    Trainer(config, tmp_path / "run").train()
    train_records = read_log(tmp_path / "run" / "log.jsonl", "train")
    val_records = read_log(tmp_path / "run" / "log.jsonl", "val")
    assert train_records[-1]["bad_samples"] == 1  # 2 steps of 2 = one epoch of 4: b.png read once, skipped
    assert val_records[-1]["bad_samples"] == 1
