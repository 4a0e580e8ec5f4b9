"""BDD100K semantic segmentation: images/10k/<split>/*.jpg with labels/sem_seg/masks/<split>/*.png.

The masks already hold the 19 Cityscapes train ids, 255 ignored; ``split`` in train / val.
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import SegmentationDataset, require_dir
from fastseg.data.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CITYSCAPES_TRAIN_ID_LOOKUP


class BDD100K(SegmentationDataset):
    """BDD100K 10k semantic segmentation (19 classes, train ids stored)."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    lookup = CITYSCAPES_TRAIN_ID_LOOKUP

    def find_samples(self) -> list[tuple[Path, Path]]:
        images = sorted(require_dir(self.root / "images" / "10k" / self.split).glob("*.jpg"))
        label_dir = self.root / "labels" / "sem_seg" / "masks" / self.split
        return [(image, label_dir / f"{image.stem}.png") for image in images]
