"""Segmentation heads: each maps the backbone's (C1..C4) to logits at its feature resolution."""
from fastseg.models.heads.aspp import ASPP, DeepLabV3Head, aspp_rates
from fastseg.models.heads.auxiliary import AuxiliaryHead
from fastseg.models.heads.base import DecodeHead
from fastseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
from fastseg.models.heads.fcn import FCNHead
from fastseg.models.heads.non_local import NonLocalBlock, NonLocalHead
from fastseg.models.heads.psp import PSPHead, PyramidPoolingModule

__all__ = [
    "ASPP",
    "AuxiliaryHead",
    "DecodeHead",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "FCNHead",
    "NonLocalBlock",
    "NonLocalHead",
    "PSPHead",
    "PyramidPoolingModule",
    "aspp_rates",
]
