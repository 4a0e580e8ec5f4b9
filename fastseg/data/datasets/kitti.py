"""KITTI semantic segmentation: training/image_2/*.png with training/semantic/*.png in Cityscapes label ids.

The benchmark publishes labels for its 200 training images only, so ``split`` is ``"training"`` (alias
``"train"``); the labels are mapped to the 19 Cityscapes train ids with the Cityscapes table.
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import SegmentationDataset, require_dir
from fastseg.data.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_ID_LOOKUP, CITYSCAPES_PALETTE


class KittiSemantics(SegmentationDataset):
    """KITTI semantics (Cityscapes label ids -> 19 train ids)."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    lookup = CITYSCAPES_LABEL_ID_LOOKUP

    def find_samples(self) -> list[tuple[Path, Path]]:
        if self.split not in ("training", "train"):
            raise ValueError(f"KITTI semantics has labels for split 'training' only, got split={self.split!r}")
        base = self.root / "training"
        images = sorted(require_dir(base / "image_2").glob("*.png"))
        return [(image, base / "semantic" / image.name) for image in images]
