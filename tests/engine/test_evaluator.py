"""evaluate(): metrics of argmax predictions, train/eval mode handling, and the 2-process gloo all-reduce."""
from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fastseg.engine.boundary_fscore import BoundaryFScore
from fastseg.engine.evaluator import evaluate, format_table
from fastseg.engine.metrics import SegmentationMetric

NUM_CLASSES = 4


class RecordingModel(nn.Module):
    """A 1x1 conv that records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)
        self.modes: list[bool] = []

    def forward(self, images):
        self.modes.append(self.training)
        return self.conv(images)


def make_batches(seed: int, count: int = 4):
    """Blobby images and labels (random 4x4 maps upsampled to 16x16), so boundaries are contours."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        images = F.interpolate(torch.randn(2, 3, 4, 4, generator=generator), size=(16, 16), mode="bilinear")
        labels = F.interpolate(torch.randint(0, NUM_CLASSES, (2, 1, 4, 4), generator=generator).float(), size=(16, 16)).long()[:, 0]
        labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
        batches.append((images, labels))
    return batches


def assert_same_metrics(result, expected):
    """Equal metric values (NaN equal to NaN): the counts are integers, so no tolerance."""
    keys = ("mIoU", "aAcc", "mAcc", "IoU", "Acc", "BF", "BF_per_class")
    torch.testing.assert_close({k: result[k] for k in keys}, {k: expected[k] for k in keys}, rtol=0, atol=0, equal_nan=True)


def make_model(seed: int) -> RecordingModel:
    torch.manual_seed(seed)
    return RecordingModel()


def test_evaluate_equals_metrics_of_argmax_and_restores_mode():
    model, batches = make_model(0), make_batches(1)
    model.train()
    result = evaluate(model, batches, num_classes=NUM_CLASSES, device="cpu", boundary=True, class_names=list("abcd"))
    assert model.training and model.modes and not any(model.modes)
    metric, boundary = SegmentationMetric(NUM_CLASSES), BoundaryFScore(NUM_CLASSES)
    with torch.no_grad():
        for images, labels in batches:
            pred = model.conv(images).argmax(1)
            metric.update(pred, labels)
            boundary.update(pred, labels)
    expected = {**metric.compute(), **boundary.compute()}
    assert 0 < expected["mIoU"] < 1, "the fixture must give a non-trivial score"
    assert_same_metrics(result, expected)
    assert list(result["BF"]) == ["0.0005diag", "0.001875diag", "0.00375diag", "0.005diag"]
    assert result["num_images"] == 8 and result["classes"] == list("abcd")
    model.eval()
    evaluate(model, batches[:1], num_classes=NUM_CLASSES, device="cpu")
    assert not model.training


def test_inference_section_of_the_config():
    model, batches = make_model(2), make_batches(3, count=1)
    whole = evaluate(model, batches, num_classes=NUM_CLASSES, device="cpu")
    section = {"mode": "slide", "crop_size": [8, 8], "stride": [8, 8], "scales": [1.0], "flip": False, "boundary": True}
    slide = evaluate(model, batches, num_classes=NUM_CLASSES, device="cpu", inference=section)
    assert slide["IoU"] == whole["IoU"] and "BF" in slide and "BF" not in whole
    with pytest.raises(ValueError, match="unknown evaluate option.*'scale'"):
        evaluate(model, batches, num_classes=NUM_CLASSES, device="cpu", inference={"scale": [1.0]})
    with pytest.raises(ValueError, match="3 class names"):
        evaluate(model, batches, num_classes=NUM_CLASSES, device="cpu", class_names=list("abc"))


def test_format_table_lists_classes_and_means():
    result = evaluate(make_model(4), make_batches(5, count=1), num_classes=NUM_CLASSES, device="cpu", boundary=True)
    table = format_table(result, ["road", "car", "sky", "tree"])
    for text in ("road", "tree", "BF@0.0005diag", "BF@0.005diag", "mean", f"{100 * result['mIoU']:.2f}", "aAcc"):
        assert text in table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )  # fmt: skip
    try:
        torch.set_num_threads(1)
        shard = make_batches(7)[rank::world_size]
        result = evaluate(make_model(6), shard, num_classes=NUM_CLASSES, device="cpu", boundary=True)
        metric = SegmentationMetric(NUM_CLASSES)
        for _, labels in shard:
            metric.update(labels.clamp(max=NUM_CLASSES - 1), labels)
        metric.all_reduce()
        torch.save({"result": result, "confusion": metric.confusion}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_all_reduce_equals_single_process(tmp_path):
    world_size = 2
    context = mp.start_processes(
        distributed_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=False, start_method="spawn"
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process gloo run did not finish within 120 s")
    batches = make_batches(7)
    expected = evaluate(make_model(6), batches, num_classes=NUM_CLASSES, device="cpu", boundary=True)
    metric = SegmentationMetric(NUM_CLASSES)
    for _, labels in batches:
        metric.update(labels.clamp(max=NUM_CLASSES - 1), labels)
    for rank in range(world_size):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(saved["confusion"], metric.confusion)
        result = saved["result"]
        assert result["num_images"] == expected["num_images"] == 8
        assert_same_metrics(result, expected)
