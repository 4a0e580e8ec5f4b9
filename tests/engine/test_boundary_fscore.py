"""Boundary F-score against a brute-force numpy computation (explicit neighbours, pairwise distances)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastseg.engine import boundary_fscore
from fastseg.engine.boundary_fscore import (
    DECOUPLE_THRESHOLDS,
    BoundaryFScore,
    class_boundaries,
    row_distance,
    squared_distance,
    threshold_pixels,
)


def numpy_boundaries(labels: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """(K, H, W) bool: pixels of class k with an 8-neighbour of another valid class, by explicit loops."""
    height, width = labels.shape
    out = np.zeros((num_classes, height, width), bool)
    for y in range(height):
        for x in range(width):
            k = labels[y, x]
            if k == ignore_index or not 0 <= k < num_classes:
                continue
            neighbours = labels[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
            valid = (neighbours != ignore_index) & (neighbours >= 0) & (neighbours < num_classes)
            out[k, y, x] = bool(np.any(valid & (neighbours != k)))
    return out


def matched(points: np.ndarray, others: np.ndarray, radius: int) -> int:
    """How many of ``points`` (N, 2) lie within Euclidean distance ``radius`` of some row of ``others``."""
    if len(points) == 0 or len(others) == 0:
        return 0
    distance2 = ((points[:, None, :] - others[None, :, :]) ** 2).sum(-1)
    return int((distance2.min(1) <= radius * radius).sum())


def davis_bound_pix(bound_th: float, shape: tuple[int, int]) -> int:
    """DAVIS f_boundary's tolerance: bound_th if >= 1 else ceil(bound_th * ||shape||)."""
    return int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(shape)))


def numpy_fscore(preds, targets, num_classes, thresholds, ignore_index=255):
    """Per-threshold per-class F from counts summed over all images (thresholds by DAVIS' rule)."""
    counts = np.zeros((len(thresholds), 4, num_classes))
    for pred, target in zip(preds, targets):
        pred = np.where(target == ignore_index, ignore_index, pred)
        bp, bg = numpy_boundaries(pred, num_classes, ignore_index), numpy_boundaries(target, num_classes, ignore_index)
        for k in range(num_classes):
            p, g = np.argwhere(bp[k]), np.argwhere(bg[k])
            for i, t in enumerate(thresholds):
                t = davis_bound_pix(t, target.shape)
                counts[i, :, k] += [len(p), matched(p, g, t), len(g), matched(g, p, t)]
    fscores = np.full((len(thresholds), num_classes), np.nan)
    for i in range(len(thresholds)):
        for k in range(num_classes):
            n_pred, m_pred, n_gt, m_gt = counts[i, :, k]
            if n_pred == 0 and n_gt == 0:
                continue
            precision = m_pred / n_pred if n_pred else 0.0
            recall = m_gt / n_gt if n_gt else 0.0
            fscores[i, k] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return fscores


def blobby_labels(batch, num_classes, size, low=(5, 6)):
    labels = torch.randint(0, num_classes, (batch, 1, *low)).float()
    return F.interpolate(labels, size=size, mode="nearest").long()[:, 0]


def test_row_distance_hand_example():
    mask = torch.tensor([[0, 1, 0, 0, 0, 1, 0, 0, 0, 0], [0] * 10], dtype=torch.bool)
    assert row_distance(mask, 3).tolist() == [[1, 0, 1, 2, 1, 0, 1, 2, 3, 3], [3] * 10]


@pytest.mark.parametrize("limit", [1, 3, 5, 12])
def test_squared_distance_matches_pairwise_distances(limit):
    mask = torch.rand(2, 3, 15, 18) < 0.03
    mask[0, 0, 7, 9] = True
    distance = squared_distance(mask, limit)
    ys, xs = np.mgrid[0:15, 0:18]
    for b in range(2):
        for c in range(3):
            points = np.argwhere(mask[b, c].numpy())
            exact = np.full((15, 18), np.inf) if len(points) == 0 else (
                (ys[..., None] - points[:, 0]) ** 2 + (xs[..., None] - points[:, 1]) ** 2
            ).min(-1)  # fmt: skip
            near = exact <= limit**2
            np.testing.assert_array_equal(distance[b, c].numpy()[near], exact[near])
            assert (distance[b, c].numpy()[~near] > limit**2).all()


def test_class_boundaries_match_explicit_neighbours():
    labels = blobby_labels(2, 4, (20, 24))
    labels[torch.rand(labels.shape) < 0.1] = 255
    labels[0, 0, 0] = 7  # out of range: no class, like an ignored pixel
    boundaries = class_boundaries(labels, 4)
    for b in range(2):
        np.testing.assert_array_equal(boundaries[b].numpy(), numpy_boundaries(labels[b].numpy(), 4, 255))


@pytest.mark.parametrize("chunk_elements", [boundary_fscore.CHUNK_ELEMENTS, 2 * 20 * 24])
def test_random_maps_match_brute_force_fscore(monkeypatch, chunk_elements):
    # The small chunk handles one class per pass: the class-chunked loop must give the same counts.
    monkeypatch.setattr(boundary_fscore, "CHUNK_ELEMENTS", chunk_elements)
    num_classes, thresholds = 4, (1, 3, 5)
    metric = BoundaryFScore(num_classes, thresholds)
    preds, targets = [], []
    for _ in range(2):
        target = blobby_labels(2, num_classes, (20, 24))
        target[:, :3, :5] = 255
        pred = blobby_labels(2, num_classes, (20, 24), low=(4, 6))
        pred[torch.rand(pred.shape) < 0.05] = 2  # isolated noise: boundaries far from any true one
        metric.update(pred, target)
        preds += list(pred.numpy())
        targets += list(target.numpy())
    expected = numpy_fscore(preds, targets, num_classes, thresholds)
    result = metric.compute()
    assert list(result["BF"]) == ["1px", "3px", "5px"]
    for i, key in enumerate(result["BF_per_class"]):
        np.testing.assert_allclose(result["BF_per_class"][key], expected[i], rtol=1e-12)
        assert result["BF"][key] == pytest.approx(np.nanmean(expected[i]))
    assert 0 < result["BF"]["1px"] < result["BF"]["5px"] < 1, "the fixture must give partial matches"


def test_hand_example_shifted_edge():
    # Left half class 0, right half class 1; the prediction's edge is 4 columns to the right.
    target = torch.zeros(1, 12, 16, dtype=torch.long)
    target[..., 8:] = 1
    pred = torch.zeros_like(target)
    pred[..., 12:] = 1
    metric = BoundaryFScore(3, thresholds=(3, 5, 9, 12))  # class 2 appears nowhere: NaN
    metric.update(pred, target)
    result = metric.compute()
    # Boundary columns: ground truth 7 (class 0) and 8 (class 1), prediction 11 and 12: 4 pixels apart.
    assert result["BF"] == {"3px": 0.0, "5px": 1.0, "9px": 1.0, "12px": 1.0}
    assert math.isnan(result["BF_per_class"]["3px"][2])
    assert metric.counts[0, :, 0].tolist() == [12, 0, 12, 0]


def test_prediction_only_class_scores_zero_and_ignored_area_does_not_count():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[..., 5:] = 1
    pred = target.clone()
    pred[0, 2:4, 1:3] = 2  # a class absent from the ground truth
    metric = BoundaryFScore(3, thresholds=(2,))
    metric.update(pred, target)
    result = metric.compute()["BF_per_class"]["2px"]
    assert result[2] == 0.0 and result[1] == 1.0 and 0 < result[0] < 1
    target[0, 2:4, 1:3] = 255  # the same blob, now ignored in the ground truth
    metric.reset()
    metric.update(pred, target)
    result = metric.compute()["BF_per_class"]["2px"]
    assert math.isnan(result[2]) and result[0] == 1.0 and result[1] == 1.0


def test_bad_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        BoundaryFScore(3, thresholds=(1.5,))
    with pytest.raises(ValueError, match="thresholds"):
        BoundaryFScore(3, thresholds=(-0.001,))


def test_default_thresholds_are_the_official_diagonal_fractions():
    # The official evaluation's 0.0005, 0.001875, 0.00375, 0.005 of the diagonal: 2, 5, 9, 12 px on a
    # 1024x2048 Cityscapes image (DAVIS' rule), 1, 3, 5, 6 px at 512x1024.
    assert DECOUPLE_THRESHOLDS == (0.0005, 0.001875, 0.00375, 0.005)
    for shape, pixels in (((1024, 2048), [2, 5, 9, 12]), ((512, 1024), [1, 3, 5, 6])):
        assert [davis_bound_pix(t, shape) for t in DECOUPLE_THRESHOLDS] == pixels
        assert [threshold_pixels(t, *shape) for t in DECOUPLE_THRESHOLDS] == pixels
    assert threshold_pixels(3, 10, 10) == 3
    assert list(BoundaryFScore(2).compute()["BF"]) == ["0.0005diag", "0.001875diag", "0.00375diag", "0.005diag"]


def test_diagonal_fractions_scale_with_each_batch_image_size():
    # Two image sizes; the fractions give 2, 4 and 5 px at 24x40 (diagonal 46.6) and 2, 3, 3 px at
    # 16x20 (25.6): each batch must be matched at its own tolerance, as DAVIS does per image.
    num_classes, thresholds = 4, (0.04, 0.08, 0.1)
    metric = BoundaryFScore(num_classes, thresholds)
    preds, targets = [], []
    for size in ((24, 40), (16, 20)):
        target = blobby_labels(2, num_classes, size)
        pred = blobby_labels(2, num_classes, size, low=(4, 6))
        metric.update(pred, target)
        preds += list(pred.numpy())
        targets += list(target.numpy())
    assert [davis_bound_pix(t, (24, 40)) for t in thresholds] == [2, 4, 5]
    assert [davis_bound_pix(t, (16, 20)) for t in thresholds] == [2, 3, 3]
    expected = numpy_fscore(preds, targets, num_classes, thresholds)
    result = metric.compute()
    assert list(result["BF"]) == ["0.04diag", "0.08diag", "0.1diag"]
    for i, key in enumerate(result["BF_per_class"]):
        np.testing.assert_allclose(result["BF_per_class"][key], expected[i], rtol=1e-12)
