"""SegmentationMetric against confusion matrices worked out by hand and a numpy re-computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastseg.data.datasets.cityscapes import LABEL_ID_TO_TRAIN_ID
from fastseg.engine.metrics import SegmentationMetric, nanmean


def test_hand_computed_confusion_matrix_with_ignored_pixel():
    # Valid (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,1); the 255 pixel is left out.
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 2]]])
    metric = SegmentationMetric(3)
    metric.update(pred, target)
    assert metric.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    result = metric.compute()
    # IoU_0 = 1 / (2 + 1 - 1), IoU_1 = 2 / (2 + 4 - 2), IoU_2 = 0 / (1 + 0 - 0).
    assert result["IoU"] == pytest.approx([0.5, 0.5, 0.0])
    assert result["Acc"] == pytest.approx([0.5, 1.0, 0.0])
    assert result["mIoU"] == pytest.approx(1 / 3)
    assert result["mAcc"] == pytest.approx(0.5)
    assert result["aAcc"] == pytest.approx(3 / 5)


def test_absent_classes_are_nan_and_left_out_of_the_means():
    # Class 1 appears nowhere; class 2 is predicted but absent from the target; class 3 nowhere.
    target = torch.tensor([[[0, 0], [0, 0]]])
    pred = torch.tensor([[[0, 2], [0, 0]]])
    metric = SegmentationMetric(4)
    metric.update(pred, target)
    result = metric.compute()
    iou, acc = result["IoU"], result["Acc"]
    assert iou[0] == pytest.approx(3 / 4) and iou[2] == 0.0
    assert math.isnan(iou[1]) and math.isnan(iou[3])
    assert acc[0] == pytest.approx(3 / 4) and all(math.isnan(a) for a in acc[1:])
    assert result["mIoU"] == pytest.approx((3 / 4 + 0) / 2)
    assert result["mAcc"] == pytest.approx(3 / 4)
    assert result["aAcc"] == pytest.approx(3 / 4)


def test_empty_metric_is_nan_and_reset_clears():
    metric = SegmentationMetric(3)
    assert math.isnan(metric.compute()["mIoU"]) and math.isnan(metric.compute()["aAcc"])
    metric.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))
    assert metric.compute()["mIoU"] == 1.0
    metric.reset()
    assert metric.confusion.sum().item() == 0


def numpy_confusion(preds, targets, num_classes, ignore_index):
    pred, target = np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in targets])
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    return np.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


@pytest.mark.parametrize("num_classes", [1, 5, 19])
def test_random_batches_match_numpy_bincount(num_classes):
    metric = SegmentationMetric(num_classes, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):
        pred = torch.randint(0, num_classes, (2, 17, 23))
        target = torch.randint(0, num_classes, (2, 17, 23))
        target[torch.rand(target.shape) < 0.2] = 255
        target[torch.rand(target.shape) < 0.05] = num_classes + 3  # out of range: ignored too
        metric.update(pred, target)
        preds.append(pred.numpy())
        targets.append(target.numpy())
    expected = numpy_confusion(preds, targets, num_classes, 255)
    np.testing.assert_array_equal(metric.confusion.numpy(), expected)
    tp = np.diag(expected).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (expected.sum(0) + expected.sum(1) - tp)
        acc = tp / expected.sum(1)
    result = metric.compute()
    np.testing.assert_allclose(result["IoU"], iou)
    np.testing.assert_allclose(result["Acc"], acc)
    assert result["mIoU"] == pytest.approx(np.nanmean(iou))
    assert result["mAcc"] == pytest.approx(np.nanmean(acc))
    assert result["aAcc"] == pytest.approx(tp.sum() / expected.sum())


def test_custom_ignore_index_and_bad_inputs():
    metric = SegmentationMetric(3, ignore_index=0)
    metric.update(torch.tensor([[[2, 1, 1]]]), torch.tensor([[[0, 1, 2]]]))
    assert metric.confusion.tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_all_reduce_without_process_group_is_a_no_op():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    metric.all_reduce()
    assert metric.confusion.tolist() == [[1, 1], [0, 0]]


def test_nanmean():
    assert nanmean([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(nanmean([math.nan]))


def cityscapes_scripts_miou(gt_label_ids: np.ndarray, pred_label_ids: np.ndarray) -> float:
    """mIoU by cityscapesScripts' evalPixelLevelSemanticLabeling rule, on Cityscapes label ids: a
    confusion matrix over all label ids; per evaluation label, TP = C[l, l], FN = row sum - TP (every
    predicted id, an id that is not an evaluation id included), FP = the column's sum over the other
    evaluation rows; NaN when TP + FP + FN = 0; the mean of the rest."""
    num_ids = len(LABEL_ID_TO_TRAIN_ID)
    confusion = np.bincount(gt_label_ids.ravel() * num_ids + pred_label_ids.ravel(), minlength=num_ids**2).reshape(num_ids, num_ids)
    eval_ids = [i for i, train_id in LABEL_ID_TO_TRAIN_ID.items() if train_id != 255]
    scores = []
    for label in eval_ids:
        tp = confusion[label, label]
        fn = confusion[label, :].sum() - tp
        fp = confusion[[i for i in eval_ids if i != label], label].sum()
        scores.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan)
    return float(np.nanmean(scores))


def metric_on_label_ids(gt_label_ids: np.ndarray, pred_label_ids: np.ndarray) -> SegmentationMetric:
    """SegmentationMetric (19 train ids) on label-id maps mapped to train ids (not an eval id -> 255)."""
    lookup = torch.tensor([LABEL_ID_TO_TRAIN_ID[i] for i in range(len(LABEL_ID_TO_TRAIN_ID))])
    metric = SegmentationMetric(19)
    metric.update(lookup[torch.from_numpy(pred_label_ids)], lookup[torch.from_numpy(gt_label_ids)])
    return metric


def test_prediction_outside_the_classes_is_a_miss_as_in_cityscapes_scripts():
    # Label ids 7 (road) and 8 (sidewalk); 0 (unlabeled) is no evaluation id. Road: TP 1, FN 1 -> 0.5;
    # sidewalk 1.0; cityscapesScripts' mIoU 0.75 (dropping the pixel would give 1.0).
    gt, pred = np.array([[7, 7, 8, 8]]), np.array([[7, 0, 8, 8]])
    assert cityscapes_scripts_miou(gt, pred) == pytest.approx(0.75)
    result = metric_on_label_ids(gt, pred).compute()
    assert result["mIoU"] == pytest.approx(0.75)
    assert result["Acc"][0] == pytest.approx(0.5) and result["aAcc"] == pytest.approx(3 / 4)


def test_random_label_id_maps_match_cityscapes_scripts():
    generator = np.random.default_rng(0)
    gt = generator.integers(0, 34, (3, 31, 37))
    # Predictions: mostly the ground truth's label id, the rest any label id (eval or not).
    pred = np.where(generator.random(gt.shape) < 0.6, gt, generator.integers(0, 34, gt.shape))
    metric = metric_on_label_ids(gt, pred)
    assert metric.missed.sum().item() > 0, "the fixture must predict ids that are not evaluation ids"
    assert metric.compute()["mIoU"] == pytest.approx(cityscapes_scripts_miou(gt, pred), rel=1e-12)


def test_out_of_range_predictions_are_misses_and_all_reduced_and_reset():
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[[-1, 3, 1, 7]]]), torch.tensor([[[0, 0, 1, 255]]]))
    assert metric.confusion.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert metric.missed.tolist() == [2, 0, 0]  # the 255 pixel is ignored whatever its prediction
    result = metric.compute()
    assert result["IoU"][0] == 0.0 and result["Acc"][0] == 0.0 and result["aAcc"] == pytest.approx(1 / 3)
    metric.all_reduce()
    assert metric.missed.tolist() == [2, 0, 0]
    metric.reset()
    assert metric.missed.sum().item() == 0
