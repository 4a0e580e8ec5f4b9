"""class_avg_pool's CUDA kernels (forward partial sums + finalize, backward) on the emulated-CUDA layer."""
from __future__ import annotations

import pytest
import torch

from fastseg.ops.class_avg_pool import class_avg_pool_reference

from .compare import DTYPES, check_every_order, on_device

pytestmark = pytest.mark.emulated_cuda

IGNORE = 255
CASES = {
    # name: (B, C, H, W, K, present classes)
    "absent-classes": (3, 37, 5, 13, 7, 5),
    "batch1": (1, 16, 9, 9, 19, 19),
    "one-pixel": (2, 5, 1, 1, 4, 4),
    "K150": (2, 8, 6, 20, 150, 150),  # 94 KB of shared memory: needs cudaFuncSetAttribute
}


def _labels(batch, height, width, present):
    labels = torch.randint(0, present, (batch, height, width))
    labels[torch.rand(batch, height, width) < 0.2] = IGNORE
    return labels


def _check(emulated, features, labels, num_classes):
    dtype = features.dtype
    reference_features = features.detach().double().requires_grad_()
    centers, counts = class_avg_pool_reference(reference_features, labels, num_classes, IGNORE)
    grad_centers = torch.randn_like(centers).to(dtype)
    (grad_features,) = torch.autograd.grad(centers, reference_features, grad_centers.double())

    features, labels, grad_centers = on_device(emulated, features, labels, grad_centers)

    def run():
        got_centers, got_counts = emulated.class_avg_pool(features, labels, num_classes, IGNORE)
        got_grad = emulated.class_avg_pool_backward(grad_centers, labels, got_counts, IGNORE)
        return got_centers, got_counts, got_grad

    check_every_order(run, (centers, counts, grad_features), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case, dtype):
    batch, channels, height, width, num_classes, present = CASES[case]
    features = torch.randn(batch, channels, height, width).to(dtype)
    _check(emulated, features, _labels(batch, height, width, present), num_classes)


def test_all_ignored_image_and_non_contiguous_features(emulated):
    features = torch.randn(2, 9, 6, 33).transpose(2, 3)  # (2, 9, 33, 6), not contiguous
    labels = _labels(2, 33, 6, 4)
    labels[1] = IGNORE
    _check(emulated, features, labels, 4)
