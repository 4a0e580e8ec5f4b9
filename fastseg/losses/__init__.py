"""Segmentation losses as ``nn.Module``s; the fused ones run on :mod:`fastseg.ops`."""
from fastseg.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss

__all__ = ["LovaszHingeLoss", "LovaszSoftmaxLoss"]
