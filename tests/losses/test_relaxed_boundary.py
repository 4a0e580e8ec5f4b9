"""relaxed_boundary_loss against a loop over each pixel's neighbourhood, and against plain CE."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastseg.losses import RelaxedBoundaryLoss, relaxed_boundary_loss

IGNORE = 255


def _blocky_labels(batch, classes, height, width, block=3):
    """Piecewise-constant labels (blocks of one class) so that there are both borders and interiors."""
    coarse = torch.randint(0, classes, (batch, -(-height // block), -(-width // block)))
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width].contiguous()
    labels[torch.rand(batch, height, width) < 0.1] = IGNORE
    return labels


def _reference(logits, labels, kernel_size):
    """(B,H,W) -log(sum of the probabilities of the labels in each valid pixel's window), by loops."""
    radius = kernel_size // 2
    batch, height, width = labels.shape
    log_probs = torch.log_softmax(logits.detach(), dim=1)
    losses = torch.zeros(batch, height, width, dtype=logits.dtype)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                if labels[b, i, j] == IGNORE:
                    continue
                window = labels[b, max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1]
                allowed = {int(v) for v in window.flatten()} - {IGNORE}
                losses[b, i, j] = -math.log(sum(math.exp(log_probs[b, c, i, j]) for c in allowed))
    return losses


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_matches_loop_reference(kernel_size):
    labels = _blocky_labels(2, 4, 10, 9)
    logits = torch.randn(2, 4, 10, 9, dtype=torch.float64, requires_grad=True)
    expected = _reference(logits, labels, kernel_size)
    pixel_losses = relaxed_boundary_loss(logits, labels, kernel_size, reduction="none")
    torch.testing.assert_close(pixel_losses, expected.to(pixel_losses.dtype))
    loss = RelaxedBoundaryLoss(kernel_size)(logits, labels)
    assert loss.item() == pytest.approx(expected.sum().item() / int((labels != IGNORE).sum()), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_equals_cross_entropy_inside_and_not_larger_at_borders():
    labels = _blocky_labels(2, 5, 12, 12)
    logits = torch.randn(2, 5, 6, 6)
    upsampled = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(upsampled, labels, ignore_index=IGNORE, reduction="none")
    relaxed = relaxed_boundary_loss(logits, labels, reduction="none")
    onehot = F.one_hot(torch.where(labels == IGNORE, 5, labels), 6)[..., :5].permute(0, 3, 1, 2).float()
    classes_nearby = F.max_pool2d(onehot, 3, stride=1, padding=1).sum(1)
    valid = labels != IGNORE
    interior, border = valid & (classes_nearby == 1), valid & (classes_nearby > 1)
    assert interior.any() and border.any()
    torch.testing.assert_close(relaxed[interior], ce[interior])
    assert (relaxed[border] < ce[border]).all()


def test_ignored_pixels_take_no_part():
    labels = _blocky_labels(1, 3, 8, 8)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    labels[0, :4] = IGNORE
    loss = relaxed_boundary_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(logits.grad[..., :3, :], torch.zeros_like(logits.grad[..., :3, :]))
