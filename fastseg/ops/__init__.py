"""Fused operations of fastseg, each behind a registered ``torch.ops.fastseg`` custom op.

Backends: ``reference`` (plain PyTorch), ``cpu`` (C++), ``cuda`` (CUDA C++), ``triton``; see
:mod:`fastseg.ops.backend` for how one is chosen.

Non-finite values (NaN, +-Inf), the same on every backend (tests/ops/test_nonfinite.py):

1. A non-finite value reaches exactly the outputs that read it, with IEEE arithmetic there (an
   Inf times a zero weight is NaN). The sampling ops (flow_warp, deform_conv2d) read the bilinear
   corners inside the image, zero weight or not, as ``F.grid_sample`` does; a corner outside is
   never read, so an Inf at ``input[..., 0, 0]`` stays local.
2. A non-finite sampling position (a flow or offset entry) makes that output NaN in every channel
   (not 0: a NaN must not turn into a plausible value), and sends no gradient to the input, to
   itself or to its mask.
3. Losses: a NaN logit or probability of a counted (not ignored) pixel makes the loss NaN, so the
   trainer's non-finite check sees it; an ignored pixel takes no part.
4. gaussian_center_distance: an infinite distance gives its limit, phi = 1, and that (pixel, class) pair sends no
   gradient (the limit of its derivative); a NaN gives NaN, in the output and the gradients.

Bad arguments raise ``ValueError`` naming the argument, both in the Python front ends and in the
raw ``torch.ops.fastseg`` ops, whose C++ checks (csrc/checks/) stand on their own. Label values
are checked once, in the front end (``checks.check_labels``); the kernels of every backend count a
label outside [0, K) nowhere. Under ``torch.autocast`` each op casts its inputs by the policy its
``FusedOp`` declares (docs/ops.md, "Mixed precision").
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
from fastseg.ops.lovasz_hinge import lovasz_hinge, lovasz_hinge_per_row, lovasz_hinge_reference
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
    "lovasz_hinge_per_row",
    "lovasz_hinge_reference",
    "lovasz_softmax",
    "lovasz_softmax_reference",
    "normalized_flow_to_pixels",
    "set_backend",
    "soft_class_pool",
    "soft_class_pool_reference",
    "use_backend",
]
