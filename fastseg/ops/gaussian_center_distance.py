"""Gaussian center distance (CSFRNet Eq. 2, with the paper's exp(m_k * delta) scale).

``phi[b, k, i, j] = 1 - exp(-||embeddings[b, :, i, j] - centers[b, k]||^2 * exp(margins[b, k] * delta))``,
in [0, 1): 0 where a pixel's embedding equals the class center, towards 1 far from it.

Numerics shared by every backend: sums and exponentials run in fp32 (fp64 for fp64 inputs) and the
result is rounded once to the embeddings' dtype. The log-scale ``margins * delta`` is clamped at
:func:`log_scale_max` (60 in fp32, 600 in fp64) so that the scale and the backward's
``2 * grad * scale`` stay finite: an inf there would give inf * 0 = NaN where an embedding equals its
center. As for ``torch.clamp``, a margin above the clamp gets no gradient.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastseg.ops.checks import check_float, check_same_device, check_size
from fastseg.ops.library import FusedOp, OpPair


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def log_scale_max(dtype: torch.dtype) -> float:
    """Largest ``margins * delta`` used: ``exp`` of it times any sane gradient stays finite in the
    accumulation dtype (e^60 ~ 1e26 of fp32's 3e38, e^600 ~ 4e260 of fp64's 2e308)."""
    return 600.0 if accumulate_dtype(dtype) == torch.float64 else 60.0


def gaussian_center_distance_reference(
    embeddings: Tensor, centers: Tensor, margins: Tensor, delta: float = 10.0
) -> Tensor:
    """Plain-PyTorch gaussian_center_distance; materialises the (B,K,C',H,W) differences.

    Shapes: embeddings (B,C',H,W), centers (B,K,C'), margins (B,K) -> phi (B,K,H,W).
    """
    acc = accumulate_dtype(embeddings.dtype)
    diff = embeddings.to(acc).unsqueeze(1) - centers.to(acc)[:, :, :, None, None]  # (B,K,C',H,W)
    # A pair at infinite distance has phi = 1 exactly and sends no gradient (its limit; the NaN rule):
    # its differences are zeroed on the differentiable path, so no 0 * Inf reaches the gradients.
    saturated = torch.isinf(diff.detach().square().sum(dim=2))  # (B,K,H,W)
    diff = torch.where(saturated.unsqueeze(2), 0.0, diff)
    squared_distance = diff.square().sum(dim=2)  # ||b_ij - s_k||^2, (B,K,H,W)
    log_scale = (margins.to(acc) * delta).clamp(max=log_scale_max(acc))
    scale = log_scale.exp()[:, :, None, None]  # exp(m_k * delta) in place of 1 / (2 m_k^2)
    phi = torch.where(saturated, 1.0, 1 - torch.exp(-squared_distance * scale))  # Eq. 2
    return phi.to(embeddings.dtype)


def _forward_triton(embeddings: Tensor, centers: Tensor, margins: Tensor, delta: float) -> Tensor:
    from fastseg.kernels import gaussian_center_distance as kernels

    return kernels.forward(embeddings, centers, margins, delta)


def _backward_triton(
    grad_phi: Tensor, embeddings: Tensor, centers: Tensor, margins: Tensor, delta: float
) -> tuple[Tensor, Tensor, Tensor]:
    from fastseg.kernels import gaussian_center_distance as kernels

    return kernels.backward(grad_phi, embeddings, centers, margins, delta)


def _fake_forward(embeddings, centers, margins, delta):
    batch, _, height, width = embeddings.shape
    return embeddings.new_empty(batch, centers.shape[1], height, width)


def _fake_backward(grad_phi, embeddings, centers, margins, delta):
    return (
        embeddings.new_empty(embeddings.shape),
        centers.new_empty(centers.shape),
        margins.new_empty(margins.shape),
    )


def _setup_context(ctx, inputs, output):
    # Only the inputs are saved: the backward recomputes ||b - s||^2 and exp(-d2 * scale) per pixel.
    # Saving phi (B,K,H,W) instead would cost as much memory as grad_phi and still need b - s for
    # the embedding and center gradients, so recomputing is both smaller and no slower.
    embeddings, centers, margins, delta = inputs
    ctx.save_for_backward(embeddings, centers, margins)
    ctx.delta = delta


def _autograd_backward(pair: OpPair):
    def backward(ctx, grad_phi):
        embeddings, centers, margins = ctx.saved_tensors
        grads = pair.backward(grad_phi.contiguous(), embeddings, centers, margins, ctx.delta)
        return grads[0], grads[1], grads[2], None

    return backward


GAUSSIAN_CENTER_DISTANCE = FusedOp("gaussian_center_distance", gaussian_center_distance_reference, _forward_triton,
                                   _backward_triton, _fake_forward, _fake_backward, _setup_context,
                                   _autograd_backward, autocast="fp32")


def gaussian_center_distance(
    embeddings: Tensor, centers: Tensor, margins: Tensor, delta: float = 10.0, *, backend: str | None = None
) -> Tensor:
    """Distance of every pixel's embedding to every class center, in [0, 1) (CSFRNet Eq. 2).

    Args:
        embeddings: (B, C', H, W) floating point, the feature embeddings b_ij.
        centers: (B, K, C') semantic centers s_k (e.g. from ``class_avg_pool``).
        margins: (B, K) class-aware margins m_k (CSFRNet Eq. 3).
        delta: the fixed scalar of the scale exp(m_k * delta).
        backend: one of ``fastseg.ops.BACKENDS``; None uses the process default.

    Returns:
        phi (B, K, H, W) in the dtype of ``embeddings`` (float32 under autocast); centers and margins
        are cast to it first.
        Differentiable w.r.t. embeddings, centers and margins.
    """
    check_float(embeddings, "embeddings", 4)
    check_float(centers, "centers", 3)
    check_float(margins, "margins", 2)
    check_same_device(embeddings=embeddings, centers=centers, margins=margins)
    check_size(centers.shape[0], embeddings.shape[0], "centers batch size")
    check_size(margins.shape[0], embeddings.shape[0], "margins batch size")
    check_size(centers.shape[2], embeddings.shape[1], "centers channels (C')")
    check_size(margins.shape[1], centers.shape[1], "margins classes (K)")
    if not isinstance(delta, (int, float)) or not math.isfinite(delta):
        raise ValueError(f"delta must be a finite number, got {delta!r}")
    dtype = GAUSSIAN_CENTER_DISTANCE.run_dtype(embeddings)  # fp32 under autocast
    centers = centers.to(dtype)
    margins = margins.to(dtype)
    delta = float(delta)
    return GAUSSIAN_CENTER_DISTANCE(embeddings.device, backend, embeddings, centers, margins, delta)


class GaussianCenterDistance(nn.Module):
    """Module form of :func:`gaussian_center_distance` with a fixed ``delta``."""

    def __init__(self, delta: float = 10.0):
        super().__init__()
        self.delta = delta

    def forward(self, embeddings: Tensor, centers: Tensor, margins: Tensor) -> Tensor:
        return gaussian_center_distance(embeddings, centers, margins, self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"
