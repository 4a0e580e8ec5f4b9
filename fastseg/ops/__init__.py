"""Fused operations of fastseg, each behind a registered ``torch.ops.fastseg`` custom op.

Backends: ``reference`` (plain PyTorch), ``cpu`` (C++), ``cuda`` (CUDA C++), ``triton``; see
:mod:`fastseg.ops.backend` for how one is chosen.
"""
from fastseg.ops.backend import BACKENDS, get_backend, set_backend, use_backend
from fastseg.ops.class_avg_pool import ClassAvgPool, class_avg_pool, class_avg_pool_reference, downsample_labels
from fastseg.ops.extension import build_info
from fastseg.ops.flow_warp import FlowWarp, flow_warp, flow_warp_reference, normalized_flow_to_pixels

__all__ = [
    "BACKENDS",
    "ClassAvgPool",
    "FlowWarp",
    "build_info",
    "class_avg_pool",
    "class_avg_pool_reference",
    "downsample_labels",
    "flow_warp",
    "flow_warp_reference",
    "get_backend",
    "normalized_flow_to_pixels",
    "set_backend",
    "use_backend",
]
