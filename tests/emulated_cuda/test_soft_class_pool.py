"""soft_class_pool's and attentional_class_feature's CUDA path on the emulated-CUDA layer: the glue's
batched GEMMs (at::bmm, here on the CPU) with the kernels around them (mass and normalisation,
gradient scaling, row-term subtraction)."""
from __future__ import annotations

import pytest
import torch

from fastseg.ops.soft_class_pool import attentional_class_feature_reference, soft_class_pool_reference

from .compare import DTYPES, check_every_order, on_device

pytestmark = pytest.mark.emulated_cuda

CASES = {
    # name: (B, C, H, W, K)
    "small": (3, 37, 11, 13, 7),
    "batch1": (1, 16, 9, 9, 19),
    "one-pixel": (2, 5, 1, 1, 4),
    "K150": (1, 8, 6, 7, 150),
    "70-channels": (1, 70, 9, 8, 33),  # several channel and class tiles
}


def _probs(batch, num_classes, height, width, absent_class=None):
    """A softmax over random logits; `absent_class` gets probability exactly 0 (mass 0)."""
    logits = torch.randn(batch, num_classes, height, width)
    if absent_class is not None:
        logits[:, absent_class] = float("-inf")
    return logits.softmax(dim=1)


def _check(emulated, features, probs):
    dtype = features.dtype
    reference = [t.detach().double().requires_grad_() for t in (features, probs)]
    centers = soft_class_pool_reference(*reference)
    attended = attentional_class_feature_reference(*reference)
    # dZ scaled by the class mass, as tests/ops/test_soft_class_pool.py does: dS = dZ / n stays O(1), so the
    # cancelling dP = dS F - r keeps fp32's error (~ulp(F) |dS|; a one-pixel class of mass 1/128 amplified it
    # to 1.5e-5, past the tolerance, in 2 of 40 draws)
    grad_centers = (torch.randn_like(centers) * reference[1].detach().sum(dim=(2, 3)).unsqueeze(-1)).to(dtype)
    grad_attended = torch.randn_like(attended).to(dtype)
    pool_grads = torch.autograd.grad(centers, reference, grad_centers.double())
    attend_grads = torch.autograd.grad(attended, reference, grad_attended.double())

    features, probs, grad_centers, grad_attended = on_device(emulated, features, probs, grad_centers, grad_attended)

    def run():
        got_centers, mass = emulated.soft_class_pool(features, probs)
        pool = emulated.soft_class_pool_backward(grad_centers, features, probs, got_centers, mass)
        got_attended, attend_centers, attend_mass = emulated.attentional_class_feature(features, probs)
        attend = emulated.attentional_class_feature_backward(grad_attended, features, probs, attend_centers,
                                                            attend_mass)
        return got_centers, got_attended, *pool, *attend

    check_every_order(run, (centers, attended, *pool_grads, *attend_grads), dtype, atol_of_max=True)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(emulated, case):
    batch, channels, height, width, num_classes = CASES[case]
    _check(emulated, torch.randn(batch, channels, height, width), _probs(batch, num_classes, height, width))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_absent_class_and_non_contiguous(emulated, dtype):
    features = torch.randn(2, 12, 9, 7).to(dtype).transpose(2, 3)  # (2, 12, 7, 9), not contiguous
    _check(emulated, features, _probs(2, 5, 7, 9, absent_class=3).to(dtype))
