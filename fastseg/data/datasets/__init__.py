"""Segmentation datasets in their real on-disk layouts, and ``build_dataset`` by name."""
from fastseg.data.datasets.ade20k import ADE20K
from fastseg.data.datasets.base import BadSampleError, SegmentationDataset
from fastseg.data.datasets.bdd100k import BDD100K
from fastseg.data.datasets.camvid import CamVid
from fastseg.data.datasets.cityscapes import Cityscapes
from fastseg.data.datasets.coco_stuff import COCOStuff
from fastseg.data.datasets.folder import FolderDataset
from fastseg.data.datasets.kitti import KittiSemantics
from fastseg.data.datasets.pascal_context import PascalContext
from fastseg.data.datasets.registry import DATASET_NAMES, build_dataset

__all__ = [
    "ADE20K", "BDD100K", "BadSampleError", "COCOStuff", "CamVid", "Cityscapes", "DATASET_NAMES", "FolderDataset",
    "KittiSemantics", "PascalContext", "SegmentationDataset", "build_dataset",
]  # fmt: skip
