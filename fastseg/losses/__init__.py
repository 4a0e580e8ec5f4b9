"""Segmentation losses as functions and ``nn.Module``s; the fused ones run on :mod:`fastseg.ops`."""
from fastseg.losses.boundary_ohem import BoundaryOhemCrossEntropyLoss, boundary_ohem_cross_entropy
from fastseg.losses.cac import ClassAwareConsistencyLoss, class_aware_consistency_loss
from fastseg.losses.cross_entropy import (
    CrossEntropyLoss,
    OhemCrossEntropyLoss,
    class_balanced_weights,
    cross_entropy,
    ohem_cross_entropy,
    ohem_mask,
)
from fastseg.losses.edge import EdgeBCELoss, edge_bce_loss, edge_target
from fastseg.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss
from fastseg.losses.relaxed_boundary import RelaxedBoundaryLoss, relaxed_boundary_loss

__all__ = [
    "BoundaryOhemCrossEntropyLoss",
    "ClassAwareConsistencyLoss",
    "CrossEntropyLoss",
    "EdgeBCELoss",
    "LovaszHingeLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "RelaxedBoundaryLoss",
    "boundary_ohem_cross_entropy",
    "class_aware_consistency_loss",
    "class_balanced_weights",
    "cross_entropy",
    "edge_bce_loss",
    "edge_target",
    "ohem_cross_entropy",
    "ohem_mask",
    "relaxed_boundary_loss",
]
