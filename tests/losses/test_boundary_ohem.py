"""boundary_ohem_cross_entropy against a per-image loop: edge-probable pixels, 10% hardest."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastseg.losses import BoundaryOhemCrossEntropyLoss, boundary_ohem_cross_entropy

IGNORE = 255


def _reference(logits, edge_logits, labels, edge_thresh, keep_ratio):
    """Per image: candidates (valid, sigmoid(edge) > t_b), sorted by CE, the first floor(ratio*H*W); batch mean."""
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    edge = F.interpolate(edge_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    batch, height, width = labels.shape
    kept = int(keep_ratio * height * width)
    selected = []
    for b in range(batch):
        candidates = []
        for i in range(height):
            for j in range(width):
                y = int(labels[b, i, j])
                if y == IGNORE or 1 / (1 + math.exp(-float(edge[b, 0, i, j]))) <= edge_thresh:
                    continue
                scores = upsampled[b, :, i, j].tolist()
                candidates.append(math.log(sum(math.exp(s) for s in scores)) - scores[y])
        selected += sorted(candidates, reverse=True)[:kept]
    return sum(selected) / len(selected), len(selected)


@pytest.mark.parametrize("edge_shift, keep_ratio", [(3.0, 0.1), (0.0, 0.1), (1.0, 0.3)])
def test_matches_loop_reference(edge_shift, keep_ratio):
    labels = torch.randint(0, 4, (2, 10, 12))
    labels[torch.rand(2, 10, 12) < 0.2] = IGNORE
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    edge_logits = torch.randn(2, 1, 5, 6, dtype=torch.float64) + edge_shift
    # every image gets at least one candidate: a labelled corner pixel with a confident edge
    # (the top-left output pixel samples edge_logits[..., 0, 0] exactly)
    labels[:, 0, 0] = 0
    edge_logits[:, 0, 0, 0] = 4.0
    edge_logits.requires_grad_()
    expected, count = _reference(logits.detach(), edge_logits.detach(), labels, 0.8, keep_ratio)
    assert count > 0
    loss = BoundaryOhemCrossEntropyLoss(keep_ratio=keep_ratio)(logits, edge_logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert edge_logits.grad is None


def test_no_edge_pixel_gives_zero():
    labels = torch.randint(0, 3, (1, 6, 6))
    logits = torch.randn(1, 3, 6, 6, requires_grad=True)
    loss = boundary_ohem_cross_entropy(logits, torch.full((1, 1, 6, 6), -5.0), labels)
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
