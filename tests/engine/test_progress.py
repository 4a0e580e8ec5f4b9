"""Progress display: a time-throttled line from the first step, one line per interval off a terminal,
in-place redraw on one, evaluation progress; per-class IoU in the training log and the worst classes in
the console line, which starts on a line of its own."""
from __future__ import annotations

import io
import math

import pytest

from fastseg.engine import logging as run_logging
from fastseg.engine.evaluator import evaluate
from fastseg.engine.logging import ProgressBar, read_log, worst_classes
from fastseg.engine.trainer import Trainer


class Clock:
    """A stand-in for ``time.perf_counter`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(run_logging.time, "perf_counter", clock)
    return clock


def test_off_a_terminal_one_line_per_interval_from_the_first_step(clock):
    stream = io.StringIO()
    bar = ProgressBar(100, stream=stream, interval_s=10.0)
    drawn = []
    for step in range(1, 101):
        clock.now += 0.5  # 2 it/s: a line at step 1, then every 20 steps (10 s), and at the end
        drawn.append(bar.update(step, {"loss": 1.0 / step}))
    lines = stream.getvalue().splitlines()
    assert [i + 1 for i, d in enumerate(drawn) if d] == [1, 21, 41, 61, 81, 100]
    assert len(lines) == 6 and "\r" not in stream.getvalue()
    assert lines[0].startswith("iter 1/100   1% | 2.00 it/s | ETA 0:00:49 | loss 1")
    assert lines[1].startswith("iter 21/100  21% | 2.00 it/s | ETA 0:00:39 | loss 0.04762")
    assert lines[-1].startswith("iter 100/100 100% | 2.00 it/s | ETA 0:00:00")


def test_resumed_speed_counts_from_the_start_step(clock):
    stream = io.StringIO()
    bar = ProgressBar(1000, start=500, stream=stream, interval_s=10.0, label="image", unit="img")
    clock.now += 4.0
    bar.update(502)
    assert stream.getvalue().startswith("image 502/1000  50% | 0.50 img/s | ETA 0:16:36")


def test_on_a_terminal_the_line_is_redrawn_in_place_and_ended_before_other_output(clock):
    stream = Terminal()
    bar = ProgressBar(10, stream=stream)
    assert bar.interval_s == 0.5
    for step in (1, 2, 3):
        clock.now += 0.3
        bar.update(step)
    assert stream.getvalue().count("\r") == 2 and "\n" not in stream.getvalue()  # steps 1 and 3
    bar.end_line()
    bar.end_line()  # nothing open: no second newline
    assert stream.getvalue().endswith("\x1b[K\n") and stream.getvalue().count("\n") == 1
    bar.close()
    assert stream.getvalue().count("\n") == 1


def test_worst_classes_lowest_first_without_absent_classes():
    ious = [0.9, 0.0076, math.nan, 0.5347, 0.0, 0.97]
    names = ["road", "traffic sign", "bus", "person", "pole", "sky"]
    assert worst_classes(ious, names) == "pole 0.00, traffic sign 0.76, person 53.47"
    assert worst_classes(ious, names, count=1) == "pole 0.00"


def test_evaluate_reports_images_done(tmp_path, make_tiny_config):
    trainer = Trainer(make_tiny_config("data.val.length=5"), tmp_path)
    stream = io.StringIO()
    bar = ProgressBar(5, stream=stream, interval_s=0.0, label="image", unit="img")
    loader = [trainer.val_set[i] for i in range(5)]
    batches = [(image[None], label[None]) for image, label in loader]
    evaluate(trainer.bare, batches, num_classes=9, device="cpu", progress=bar)
    assert [line.split(" | ")[0] for line in stream.getvalue().splitlines()] == [f"image {i}/5 {20 * i:3d}%" for i in range(1, 6)]


def test_training_logs_per_class_iou_and_prints_the_worst_classes(tmp_path, make_tiny_config, capsys):
    config = make_tiny_config("train.iterations=2", "train.eval_interval=1")
    trainer = Trainer(config, tmp_path)
    metrics = trainer.train()
    records = read_log(tmp_path / "log.jsonl", "val")
    classes = list(trainer.val_set.classes)
    assert [r["iter"] for r in records] == [1, 2]
    last = records[-1]
    logged = [last[f"IoU/{name}"] for name in classes]
    assert logged == pytest.approx(metrics["IoU"], nan_ok=True)
    out, err = capsys.readouterr()
    val_lines = [line for line in out.splitlines() if "val mIoU" in line]
    assert len(val_lines) == 2 and all(line.startswith("[iter ") for line in val_lines)
    assert val_lines[-1].endswith(f"worst IoU: {worst_classes(metrics['IoU'], classes)}")
    # Off a terminal: the first iteration drawn at once, the last always, each on a line of its own.
    lines = err.splitlines()
    assert any(line.startswith("iter 1/2 ") for line in lines) and any(line.startswith("iter 2/2 ") for line in lines)
    assert any(line.startswith("val image 2/2 ") for line in lines)


def test_on_a_terminal_the_val_line_is_not_glued_to_the_progress_line(tmp_path, make_tiny_config, monkeypatch):
    terminal = Terminal()  # stdout and stderr on one terminal, as a user sees them
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setattr("sys.stderr", terminal)
    Trainer(make_tiny_config("train.iterations=2"), tmp_path).train()
    text = terminal.getvalue()
    assert "\r" in text and "\x1b[K[iter" not in text
    val_line = next(line for line in text.split("\n") if "val mIoU" in line)
    assert val_line.startswith("[iter 2] val mIoU"), repr(val_line)
