"""``build_dataset(name, root, split, transforms)``: datasets by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from fastseg.data.datasets.ade20k import ADE20K
from fastseg.data.datasets.base import JointTransform
from fastseg.data.datasets.bdd100k import BDD100K
from fastseg.data.datasets.camvid import CamVid
from fastseg.data.datasets.cityscapes import Cityscapes
from fastseg.data.datasets.coco_stuff import COCOStuff
from fastseg.data.datasets.folder import FolderDataset
from fastseg.data.datasets.kitti import KittiSemantics
from fastseg.data.datasets.pascal_context import PascalContext
from fastseg.data.synthetic import SyntheticStreetScenes

FILE_DATASETS = {
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "pascal_context": PascalContext,
    "coco_stuff": COCOStuff,
    "camvid": CamVid,
    "kitti": KittiSemantics,
    "bdd100k": BDD100K,
    "folder": FolderDataset,
}
DATASET_NAMES = ("synthetic", *FILE_DATASETS)


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    transforms: JointTransform | None = None,
    **kwargs: Any,
) -> Dataset:
    """The dataset ``name`` (one of ``DATASET_NAMES``) at ``root``; ``"synthetic"`` needs no root.

    Extra keyword arguments go to the dataset (``skip_bad`` for file datasets; ``length``, ``size``,
    ``seed`` for the synthetic one).
    """
    if name == "synthetic":
        return SyntheticStreetScenes(split=split, transforms=transforms, **kwargs)
    if name not in FILE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root directory")
    return FILE_DATASETS[name](root, split=split, transforms=transforms, **kwargs)
