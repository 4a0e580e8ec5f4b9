"""edge_target on hand-made label maps; the class-balanced edge BCE against a loop reference."""
from __future__ import annotations

import math

import pytest
import torch

from fastseg.losses import EdgeBCELoss, edge_bce_loss, edge_target

IGNORE = 255


def _map(rows):
    return torch.tensor([[int(c) if c != "x" else IGNORE for c in row] for row in rows]).unsqueeze(0)


def _mask(rows):
    return torch.tensor([[c == "1" for c in row] for row in rows]).unsqueeze(0)


def test_single_pixel_gives_a_disk_of_radius_two():
    labels = _map(["0000000", "0000000", "0000000", "0001000", "0000000", "0000000", "000000x"])
    expected = _mask(["0000000", "0001000", "0011100", "0111110", "0011100", "0001000", "0000000"])
    assert torch.equal(edge_target(labels, radius=2), expected)


def test_straight_border_and_ignored_region():
    labels = _map(["00000111", "00000111", "00000111", "xxxx0111", "xxxx0111"])
    # columns 3..6 lie within 2 of the 0|1 border; ignored pixels are no edge and make none.
    expected = _mask(["00011110", "00011110", "00011110", "00001110", "00001110"])
    assert torch.equal(edge_target(labels, radius=2), expected)
    expected_radius1 = _mask(["00001100", "00001100", "00001100", "00001100", "00001100"])
    assert torch.equal(edge_target(labels, radius=1), expected_radius1)


def _bce_reference(logits, edges, valid):
    """Loop form: w = #neg/#valid on edge pixels, #pos/#valid elsewhere; mean of w * BCE over valid pixels."""
    values = [(float(x), bool(e)) for x, e, v in zip(logits.flatten(), edges.flatten(), valid.flatten()) if v]
    positives = sum(e for _, e in values)
    total = len(values)
    loss = 0.0
    for x, e in values:
        p = 1 / (1 + math.exp(-x))
        weight = (total - positives) / total if e else positives / total
        loss += weight * -(math.log(p) if e else math.log(1 - p))
    return loss / total


def _blocky_labels(batch=2, height=12, width=12):
    coarse = torch.randint(0, 4, (batch, height // 4, width // 4))
    labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
    labels[torch.rand(batch, height, width) < 0.1] = IGNORE
    return labels


def test_edge_bce_matches_loop_reference_and_weight_25():
    labels = _blocky_labels()
    logits = torch.randn(2, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    edges, valid = edge_target(labels), labels != IGNORE
    assert edges.any() and (valid & ~edges).any()
    expected = _bce_reference(logits.detach(), edges, valid)
    assert edge_bce_loss(logits, edges, valid).item() == pytest.approx(expected, rel=1e-10)
    loss = EdgeBCELoss()(logits, labels)
    assert loss.item() == pytest.approx(25 * expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_no_sigmoid_before_the_bce():
    """Confident correct logits give a loss near 0; a sigmoid applied twice would leave ~0.3 per pixel."""
    labels = _blocky_labels()
    edges = edge_target(labels)
    logits = torch.where(edges, 30.0, -30.0).unsqueeze(1)
    assert EdgeBCELoss()(logits, labels).item() < 1e-9


def test_low_resolution_logits_are_upsampled():
    labels = _blocky_labels()
    loss = EdgeBCELoss(loss_weight=1.0)(torch.randn(2, 1, 3, 3, requires_grad=True), labels)
    assert torch.isfinite(loss) and loss > 0
