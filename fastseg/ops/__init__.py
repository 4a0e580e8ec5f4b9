"""Fused operations of fastseg, each behind a registered ``torch.ops.fastseg`` custom op.

Backends: ``reference`` (plain PyTorch), ``cpu`` (C++), ``cuda`` (CUDA C++), ``triton``; see
:mod:`fastseg.ops.backend` for how one is chosen.
"""
from fastseg.ops.backend import BACKENDS, get_backend, set_backend, use_backend
from fastseg.ops.class_avg_pool import ClassAvgPool, class_avg_pool, class_avg_pool_reference, downsample_labels
from fastseg.ops.deform_conv2d import (
    DeformConv2d,
    ModulatedDeformConv2d,
    deform_conv2d,
    deform_conv2d_reference,
)
from fastseg.ops.extension import build_info

__all__ = [
    "BACKENDS",
    "ClassAvgPool",
    "DeformConv2d",
    "ModulatedDeformConv2d",
    "build_info",
    "class_avg_pool",
    "class_avg_pool_reference",
    "deform_conv2d",
    "deform_conv2d_reference",
    "downsample_labels",
    "get_backend",
    "set_backend",
    "use_backend",
]
