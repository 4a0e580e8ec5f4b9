"""CSFRNet's CAC loss (Eq. 4) and smooth loss (Eq. 5) against a per-(image, class) loop reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastseg.losses.cac as cac
from fastseg.losses import ClassAwareConsistencyLoss, class_aware_consistency_loss
from fastseg.ops import extension, lovasz_hinge_per_row

IGNORE = 255


def _inputs(batch=2, channels=4, size=(6, 7), label_size=(12, 14), classes=5, present=4, dtype=torch.float64):
    embeddings = (0.3 * torch.randn(batch, channels, *size, dtype=dtype)).requires_grad_()
    margins = (0.1 * torch.randn(batch, 1, *size, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, present, (batch, *label_size))
    labels[torch.rand(batch, *label_size) < 0.15] = IGNORE
    return embeddings, margins, labels


def _reference(embeddings, margins, labels, delta=10.0, binary_loss="lovasz"):
    """Loops over images and their present classes; Eq. 1-5 written out with plain tensor ops."""
    small = F.interpolate(labels[:, None].float(), size=embeddings.shape[-2:], mode="nearest")[:, 0].long()
    cac_images, smooth_images = [], []
    for b in range(labels.shape[0]):
        valid = small[b] != IGNORE
        classes = sorted(set(small[b][valid].tolist()))
        if not classes:
            continue
        cac_terms, smooth_terms = [], []
        for k in classes:
            own = small[b] == k
            center = embeddings[b][:, own].mean(1)  # Eq. 1
            margin = margins[b, 0][own].mean()  # Eq. 3
            squared_distance = (embeddings[b] - center[:, None, None]).square().sum(0)
            phi = 1 - torch.exp(-squared_distance * torch.exp(margin * delta))  # Eq. 2
            if binary_loss == "lovasz":
                scores = (2 * (1 - phi) - 1)[valid]
                cac_terms.append(lovasz_hinge_per_row(scores[None], own[valid][None])[0])
            else:
                d, y = phi[valid], own[valid]
                log_d, log_1md = torch.log(d).clamp(min=-100), torch.log(1 - d).clamp(min=-100)
                cac_terms.append(-torch.where(y, log_1md, log_d).mean())
            smooth_terms.append((margins[b, 0][own] - margin).square().mean())  # Eq. 5
        cac_images.append(torch.stack(cac_terms).mean())
        smooth_images.append(torch.stack(smooth_terms).mean())
    return torch.stack(cac_images).mean(), torch.stack(smooth_images).mean()


@pytest.mark.parametrize("binary_loss", ["lovasz", "bce"])
def test_matches_loop_reference_with_gradients(binary_loss):
    embeddings, margins, labels = _inputs()
    loss_cac, loss_smooth = class_aware_consistency_loss(embeddings, margins, labels, 5, binary_loss=binary_loss)
    expected_cac, expected_smooth = _reference(embeddings, margins, labels, binary_loss=binary_loss)
    torch.testing.assert_close(loss_cac, expected_cac)
    torch.testing.assert_close(loss_smooth, expected_smooth)
    grads = torch.autograd.grad(loss_cac + loss_smooth, (embeddings, margins))
    expected_grads = torch.autograd.grad(expected_cac + expected_smooth, (embeddings, margins))
    for grad, expected in zip(grads, expected_grads):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        torch.testing.assert_close(grad, expected)


def test_near_zero_when_embeddings_sit_on_well_separated_centers():
    classes, size = 4, (8, 8)
    labels = torch.randint(0, classes, (2, *size))
    labels[:, 0, 0] = IGNORE
    centers = 10 * torch.eye(classes, dtype=torch.float64)  # pairwise squared distance 200
    embeddings = centers[labels.clamp(max=classes - 1)].permute(0, 3, 1, 2).contiguous()
    margins = torch.full((2, 1, *size), 0.5, dtype=torch.float64)  # scale exp(5)
    loss_cac, loss_smooth = class_aware_consistency_loss(embeddings, margins, labels, classes)
    assert loss_cac.item() < 1e-9 and loss_smooth.item() == 0
    noisy = embeddings + torch.randn_like(embeddings)
    assert class_aware_consistency_loss(noisy, margins, labels, classes)[0] > 1e-3


def test_bce_gradients_stay_finite_when_distances_saturate():
    # Embeddings on well-separated centers: phi is exactly 0 for the own class and exactly 1 for the
    # others, the ends of binary_cross_entropy's domain, where a log of the unselected target must
    # not turn the gradient into NaN (0 * inf).
    classes, size = 4, (8, 8)
    labels = torch.randint(0, classes, (2, *size))
    centers = 10 * torch.eye(classes, dtype=torch.float64)
    embeddings = centers[labels].permute(0, 3, 1, 2).contiguous()
    embeddings = (embeddings + 1e-3 * torch.randn_like(embeddings)).requires_grad_()
    margins = torch.full((2, 1, *size), 0.5, dtype=torch.float64, requires_grad=True)
    loss_cac, _ = class_aware_consistency_loss(embeddings, margins, labels, classes, binary_loss="bce")
    expected_cac, _ = _reference(embeddings, margins, labels, binary_loss="bce")
    torch.testing.assert_close(loss_cac, expected_cac)
    grads = torch.autograd.grad(loss_cac, (embeddings, margins))
    assert all(torch.isfinite(grad).all() for grad in grads)


def test_invariant_to_class_id_permutation_and_absent_classes():
    embeddings, margins, labels = _inputs(classes=5, present=5)
    permutation = torch.randperm(5)
    permuted = torch.where(labels == IGNORE, IGNORE, permutation[labels.clamp(max=4)])
    losses = class_aware_consistency_loss(embeddings, margins, labels, 5)
    losses_permuted = class_aware_consistency_loss(embeddings, margins, permuted, 5)
    losses_more_classes = ClassAwareConsistencyLoss(num_classes=9)(embeddings, margins, labels)
    for loss, other, more in zip(losses, losses_permuted, losses_more_classes):
        torch.testing.assert_close(loss, other)
        torch.testing.assert_close(loss, more)


def test_all_ignored_gives_zero():
    embeddings, margins, labels = _inputs()
    labels.fill_(IGNORE)
    loss_cac, loss_smooth = class_aware_consistency_loss(embeddings, margins, labels, 5)
    (loss_cac + loss_smooth).backward()
    assert loss_cac.item() == 0 and loss_smooth.item() == 0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_calls_the_fastseg_ops(monkeypatch):
    """The loss goes through fastseg.ops' public functions (not a private re-implementation)."""
    calls = []
    for name in ("downsample_labels", "class_avg_pool", "gaussian_center_distance", "lovasz_hinge"):
        original = getattr(cac, name)
        monkeypatch.setattr(cac, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    class_aware_consistency_loss(*_inputs(dtype=torch.float32), 5)
    assert sorted(set(calls)) == ["class_avg_pool", "downsample_labels", "gaussian_center_distance", "lovasz_hinge"]
    assert calls.count("class_avg_pool") == 3  # centers (Eq. 1), margins (Eq. 3), smooth loss (Eq. 5)


@pytest.mark.skipif(not extension.available(), reason="fastseg._C is not built: the ops run their reference")
def test_runs_the_registered_custom_ops():
    embeddings, margins, labels = _inputs(dtype=torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        sum(class_aware_consistency_loss(embeddings, margins, labels, 5)).backward()
    names = {event.name for event in profile.events()}
    print(sorted(name for name in names if name.startswith("fastseg::")))
    for op in ("class_avg_pool", "gaussian_center_distance", "lovasz_hinge", "lovasz_hinge_backward"):
        assert f"fastseg::{op}" in names


def test_compiles_without_graph_breaks_or_host_sync():
    embeddings, margins, labels = _inputs(dtype=torch.float32)
    module = ClassAwareConsistencyLoss(num_classes=5)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    losses, expected = compiled(embeddings, margins, labels), module(embeddings, margins, labels)
    for loss, reference in zip(losses, expected):
        torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(sum(losses), (embeddings, margins))
    expected_grads = torch.autograd.grad(sum(expected), (embeddings, margins))
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference)
