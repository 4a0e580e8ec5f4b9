"""cross_entropy (plain, class-balanced) and ohem_cross_entropy against per-pixel loop references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastseg.losses import CrossEntropyLoss, OhemCrossEntropyLoss, cross_entropy, ohem_cross_entropy, ohem_mask

IGNORE = 255


def _inputs(batch=2, classes=5, size=(9, 11), logits_size=(5, 6), ignored=0.2, dtype=torch.float64):
    logits = (2 * torch.randn(batch, classes, *logits_size, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, classes, (batch, *size))
    labels[torch.rand(batch, *size) < ignored] = IGNORE
    return logits, labels


def _pixels(logits, labels):
    """[(probability of the true class, cross-entropy, (b, i, j))] of every non-ignored pixel, by loops."""
    upsampled = F.interpolate(logits.detach(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    pixels = []
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = int(labels[b, i, j])
                if y == IGNORE:
                    continue
                scores = upsampled[b, :, i, j].tolist()
                log_norm = math.log(sum(math.exp(s) for s in scores))
                pixels.append((math.exp(scores[y] - log_norm), log_norm - scores[y], (b, i, j)))
    return pixels


def test_cross_entropy_matches_loop_reference():
    logits, labels = _inputs()
    pixels = _pixels(logits, labels)
    expected = sum(ce for _, ce, _ in pixels) / len(pixels)
    loss = cross_entropy(logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_class_balanced_is_mean_of_class_means():
    logits, labels = _inputs(classes=6)
    labels[labels == 4] = 0  # an absent class
    per_class = {}
    for _, ce, (b, i, j) in _pixels(logits, labels):
        per_class.setdefault(int(labels[b, i, j]), []).append(ce)
    expected = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    loss = CrossEntropyLoss(class_balanced=True)(logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert abs(loss.item() - cross_entropy(logits, labels).item()) > 1e-6


def test_same_size_logits_are_not_resized():
    logits, labels = _inputs(logits_size=(9, 11))
    expected = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    torch.testing.assert_close(cross_entropy(logits, labels), expected)


@pytest.mark.parametrize("min_kept", [0, 10, 60, 10_000])
def test_ohem_keeps_hard_pixels_and_at_least_min_kept(min_kept):
    logits, labels = _inputs(logits_size=(9, 11))
    thresh = 0.3
    pixels = sorted(_pixels(logits, labels))
    kept = [p for rank, p in enumerate(pixels) if p[0] < thresh or rank < min_kept]
    expected_mask = torch.zeros(labels.shape, dtype=torch.bool)
    for _, _, index in kept:
        expected_mask[index] = True
    mask = ohem_mask(logits, labels, thresh, min_kept)
    assert torch.equal(mask, expected_mask)
    assert int(mask.sum()) >= min(min_kept, len(pixels))
    loss = ohem_cross_entropy(logits, labels, thresh, min_kept)
    assert loss.item() == pytest.approx(sum(ce for _, ce, _ in kept) / len(kept), rel=1e-10)


def test_ohem_resizes_logits_and_matches_module():
    logits, labels = _inputs(logits_size=(4, 4))
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    module = OhemCrossEntropyLoss(thresh=0.7, min_kept=50)
    torch.testing.assert_close(module(logits, labels), ohem_cross_entropy(upsampled, labels, 0.7, 50))


@pytest.mark.parametrize("loss_fn", [cross_entropy, ohem_cross_entropy, CrossEntropyLoss(class_balanced=True)])
def test_all_ignored_gives_zero_and_zero_gradient(loss_fn):
    logits, labels = _inputs()
    labels.fill_(IGNORE)
    loss = loss_fn(logits, labels)
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
