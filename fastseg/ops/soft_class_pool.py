"""Soft class-wise pooling (ACFNet Eq. 2) and the attentional class feature (ACFNet Eq. 3).

Per image, with features F (C, HW), class probabilities P (K, HW) and class mass n_k = sum_j P[k, j]:

    centers  Z[k, c] = sum_j P[k, j] F[c, j] / n_k      (Eq. 2; Z[k] = 0 where n_k == 0)
    attended A[c, j] = sum_k P[k, j] Z[k, c]            (Eq. 3)

Backward (quotient rule through the normalisation), given dZ (K, C):

    dS = dZ / n  (0 where n_k == 0),   r_k = sum_c dS[k, c] Z[k, c]
    dF = dS^T P,                       dP[k, j] = sum_c dS[k, c] F[c, j] - r_k

and for Eq. 3, given dA (C, HW): dZ = P dA^T, and dP gains sum_c Z[k, c] dA[c, j].
A class with zero mass (all its probabilities exactly 0) has center 0 and gets zero gradient, as an
absent class does in class_avg_pool. The fused ops return the centers and the mass (fp32, or fp64
for fp64 inputs) next to their result, so the backward reuses them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastseg.ops.checks import check_float, check_same_device, check_same_dtype, check_size
from fastseg.ops.library import FusedOp, OpPair, first_output


def soft_class_pool_reference(features: Tensor, probs: Tensor) -> Tensor:
    """Plain-PyTorch soft_class_pool: (B,C,H,W) features, (B,K,H,W) probs -> (B,K,C) centers (Eq. 2)."""
    weights = probs.flatten(2)  # (B,K,HW)
    sums = torch.bmm(weights, features.flatten(2).transpose(1, 2))  # (B,K,C)
    mass = weights.sum(dim=2, keepdim=True)  # (B,K,1)
    present = mass != 0
    return torch.where(present, sums / torch.where(present, mass, torch.ones_like(mass)), torch.zeros_like(sums))


def attentional_class_feature_reference(features: Tensor, probs: Tensor) -> Tensor:
    """Plain-PyTorch attentional_class_feature: (B,C,H,W), (B,K,H,W) -> (B,C,H,W) (Eq. 2 then Eq. 3)."""
    centers = soft_class_pool_reference(features, probs)
    attended = torch.bmm(centers.transpose(1, 2), probs.flatten(2))  # (B,C,HW)
    return attended.reshape(features.shape)


def _pool_triton(features: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    from fastseg.kernels import soft_class_pool as kernels

    return kernels.pool(features, probs)


def _pool_backward_triton(
    grad_centers: Tensor, features: Tensor, probs: Tensor, centers: Tensor, mass: Tensor
) -> tuple[Tensor, Tensor]:
    from fastseg.kernels import soft_class_pool as kernels

    return kernels.backward(grad_centers, None, features, probs, centers, mass)


def _attend_triton(features: Tensor, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    from fastseg.kernels import soft_class_pool as kernels

    return kernels.attend(features, probs)


def _attend_backward_triton(
    grad_attended: Tensor, features: Tensor, probs: Tensor, centers: Tensor, mass: Tensor
) -> tuple[Tensor, Tensor]:
    from fastseg.kernels import soft_class_pool as kernels

    return kernels.backward(None, grad_attended, features, probs, centers, mass)


def _fake_pool(features, probs):
    batch, channels = features.shape[:2]
    classes = probs.shape[1]
    mass_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    return features.new_empty(batch, classes, channels), features.new_empty(batch, classes, dtype=mass_dtype)


def _fake_attend(features, probs):
    return (features.new_empty(features.shape), *_fake_pool(features, probs))


def _fake_backward(grad, features, probs, centers, mass):
    return features.new_empty(features.shape), probs.new_empty(probs.shape)


def _setup_pool(ctx, inputs, output):
    centers, mass = output
    ctx.mark_non_differentiable(mass)
    ctx.save_for_backward(*inputs, centers, mass)


def _setup_attend(ctx, inputs, output):
    _, centers, mass = output
    ctx.mark_non_differentiable(centers, mass)
    ctx.save_for_backward(*inputs, centers, mass)


def _autograd_backward(pair: OpPair):
    def backward(ctx, grad, *grads_of_saved_outputs):
        features, probs, centers, mass = ctx.saved_tensors
        return pair.backward(grad.contiguous(), features, probs, centers, mass)

    return backward


SOFT_CLASS_POOL = FusedOp("soft_class_pool", soft_class_pool_reference, _pool_triton, _pool_backward_triton,
                          _fake_pool, _fake_backward, _setup_pool, _autograd_backward, fused_result=first_output,
                          autocast="lower")
ATTENTIONAL_CLASS_FEATURE = FusedOp(
    "attentional_class_feature", attentional_class_feature_reference, _attend_triton, _attend_backward_triton,
    _fake_attend, _fake_backward, _setup_attend, _autograd_backward, fused_result=first_output,
    autocast="lower")


def _check_inputs(features: Tensor, probs: Tensor) -> None:
    check_float(features, "features", 4)
    check_float(probs, "probs", 4)
    check_same_device(features=features, probs=probs)
    check_size(probs.shape[0], features.shape[0], "probs batch size")
    if probs.shape[2:] != features.shape[2:]:
        raise ValueError(
            f"probs spatial size {tuple(probs.shape[2:])} differs from features {tuple(features.shape[2:])}; "
            "resize the probabilities first"
        )
    check_same_dtype(SOFT_CLASS_POOL.autocast, features=features, probs=probs)
    if probs.shape[1] == 0:
        raise ValueError("probs must have at least one class, got shape " + str(tuple(probs.shape)))


def soft_class_pool(features: Tensor, probs: Tensor, *, backend: str | None = None) -> Tensor:
    """Probability-weighted mean feature of each class, the class centers of ACFNet Eq. 2.

    Args:
        features: (B, C, H, W) floating point.
        probs: (B, K, H, W) class probabilities at the same H, W (a softmax output), same dtype.
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        centers (B, K, C) in the dtype of ``features``; zeros (with zero gradient) for a class whose
        probabilities are all exactly 0. Differentiable w.r.t. features and probs.
    """
    _check_inputs(features, probs)
    return SOFT_CLASS_POOL(features.device, backend, features, probs)


def attentional_class_feature(features: Tensor, probs: Tensor, *, backend: str | None = None) -> Tensor:
    """ACFNet's attentional class feature (Eq. 3 on the centers of Eq. 2), fused in one op.

    ``attended[b, :, j] = sum_k probs[b, k, j] * centers[b, k]`` with the centers of
    :func:`soft_class_pool`; nothing of size B*K*C*H*W is materialised.

    Args:
        features: (B, C, H, W) floating point.
        probs: (B, K, H, W) class probabilities at the same H, W (a softmax output), same dtype.
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        (B, C, H, W) contiguous, in the dtype of ``features``. Differentiable w.r.t. features and probs.
    """
    _check_inputs(features, probs)
    return ATTENTIONAL_CLASS_FEATURE(features.device, backend, features, probs)


class SoftClassPool(nn.Module):
    """Module form of :func:`soft_class_pool`: (features, probs) -> (B, K, C) class centers."""

    def forward(self, features: Tensor, probs: Tensor) -> Tensor:
        return soft_class_pool(features, probs)


class AttentionalClassFeature(nn.Module):
    """Module form of :func:`attentional_class_feature` (ACFNet's Class Attention Block core)."""

    def forward(self, features: Tensor, probs: Tensor) -> Tensor:
        return attentional_class_feature(features, probs)
