"""Evaluation of a segmentation model over a data loader: mIoU, accuracies, optional boundary F-score."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fastseg.engine.boundary_fscore import BoundaryFScore
from fastseg.engine.inference import inference_options, predict_logits
from fastseg.engine.logging import ProgressBar
from fastseg.engine.metrics import SegmentationMetric, all_reduce_sum


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    num_classes: int,
    ignore_index: int = 255,
    device: torch.device | str,
    inference: Mapping[str, Any] | None = None,
    boundary: bool = False,
    class_names: Sequence[str] | None = None,
    progress: ProgressBar | None = None,
) -> dict[str, Any]:
    """Run ``model`` (already on ``device``) over ``loader``'s ``(images (B,3,H,W), labels (B,H,W))``.

    ``inference`` holds :func:`~fastseg.engine.inference.predict_logits` options (a config's ``evaluate``
    section: mode, crop_size, stride, scales, flip; its ``boundary: true`` turns the boundary F-score on
    as ``boundary=True`` does). The model is put in eval mode and given back in its previous mode.
    Under an initialised ``torch.distributed`` each rank evaluates its shard of the data and the counts
    are summed over ranks, so every rank returns the metrics of the whole dataset. ``progress`` is
    updated with the number of images done after each batch (this rank's).

    Returns :meth:`SegmentationMetric.compute`'s dict (``mIoU``, ``aAcc``, ``mAcc``, ``IoU``, ``Acc``) plus
    ``num_images``; with the boundary F-score, ``BF`` ({"0.0005diag": mean F, ...} at fractions of the image diagonal) and
    ``BF_per_class``; with ``class_names``, ``classes``.
    """
    options = inference_options(dict(inference or {}))
    boundary = boundary or bool((inference or {}).get("boundary", False))
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
    metrics = [SegmentationMetric(num_classes, ignore_index, device)]
    if boundary:
        metrics.append(BoundaryFScore(num_classes, ignore_index=ignore_index, device=device))
    num_images = torch.zeros((), dtype=torch.int64, device=device)
    done = 0  # images of this rank, counted on the host for the progress line
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                pred = predict_logits(model, images, num_classes, **options).argmax(1)
                for metric in metrics:
                    metric.update(pred, labels)
                num_images += images.shape[0]
                if progress is not None:
                    done += images.shape[0]
                    progress.update(done)
    finally:
        model.train(was_training)
    results: dict[str, Any] = {}
    for metric in metrics:
        metric.all_reduce()
        results.update(metric.compute())
    results["num_images"] = int(all_reduce_sum(num_images).item())
    if class_names is not None:
        results["classes"] = list(class_names)
    return results


def format_table(results: Mapping[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A plain-text table of an :func:`evaluate` result: one row per class (IoU, Acc and each BF, in %),
    then the means and the pixel accuracy."""
    names = list(class_names or results.get("classes") or range(len(results["IoU"])))
    bf_keys = list(results.get("BF_per_class", {}))
    header = ["class", "IoU", "Acc", *(f"BF@{key}" for key in bf_keys)]

    def percent(value: float) -> str:
        return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"

    rows = [
        [str(name), percent(results["IoU"][k]), percent(results["Acc"][k]),
         *(percent(results["BF_per_class"][key][k]) for key in bf_keys)]
        for k, name in enumerate(names)
    ]  # fmt: skip
    rows.append(["mean", percent(results["mIoU"]), percent(results["mAcc"]), *(percent(results["BF"][key]) for key in bf_keys)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(-1, "-" * len(lines[0]))
    lines.append(f"aAcc {percent(results['aAcc'])}  mIoU {percent(results['mIoU'])}  mAcc {percent(results['mAcc'])}")
    return "\n".join(lines)
