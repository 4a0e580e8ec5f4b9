"""Fused operations of fastseg, each behind a registered ``torch.ops.fastseg`` custom op.

Backends: ``reference`` (plain PyTorch), ``cpu`` (C++), ``cuda`` (CUDA C++), ``triton``; see
:mod:`fastseg.ops.backend` for how one is chosen.
"""
from fastseg.ops.backend import BACKENDS, get_backend, set_backend, use_backend
from fastseg.ops.class_avg_pool import ClassAvgPool, class_avg_pool, class_avg_pool_reference, downsample_labels
from fastseg.ops.deform_conv2d import DeformConv2d, ModulatedDeformConv2d, deform_conv2d, deform_conv2d_reference
from fastseg.ops.extension import build_info
from fastseg.ops.flow_warp import FlowWarp, flow_warp, flow_warp_reference, normalized_flow_to_pixels
from fastseg.ops.gaussian_center_distance import (
    GaussianCenterDistance,
    gaussian_center_distance,
    gaussian_center_distance_reference,
)
from fastseg.ops.lovasz_hinge import lovasz_hinge, lovasz_hinge_reference, lovasz_hinge_vectorized
from fastseg.ops.lovasz_softmax import lovasz_softmax, lovasz_softmax_reference
from fastseg.ops.recording import FusedOpRecorder
from fastseg.ops.soft_class_pool import (
    AttentionalClassFeature,
    SoftClassPool,
    attentional_class_feature,
    attentional_class_feature_reference,
    soft_class_pool,
    soft_class_pool_reference,
)

__all__ = [
    "BACKENDS",
    "AttentionalClassFeature",
    "ClassAvgPool",
    "DeformConv2d",
    "FlowWarp",
    "FusedOpRecorder",
    "GaussianCenterDistance",
    "ModulatedDeformConv2d",
    "SoftClassPool",
    "attentional_class_feature",
    "attentional_class_feature_reference",
    "build_info",
    "class_avg_pool",
    "class_avg_pool_reference",
    "deform_conv2d",
    "deform_conv2d_reference",
    "downsample_labels",
    "flow_warp",
    "flow_warp_reference",
    "gaussian_center_distance",
    "gaussian_center_distance_reference",
    "get_backend",
    "lovasz_hinge",
    "lovasz_hinge_reference",
    "lovasz_hinge_vectorized",
    "lovasz_softmax",
    "lovasz_softmax_reference",
    "normalized_flow_to_pixels",
    "set_backend",
    "soft_class_pool",
    "soft_class_pool_reference",
    "use_backend",
]
