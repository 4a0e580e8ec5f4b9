"""Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_*.png.

Labels are read from ``*_gtFine_labelTrainIds.png`` when present (values 0..18 and 255), otherwise from
``*_gtFine_labelIds.png`` mapped with the official id -> trainId table (19 classes, the rest ignored).
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import IGNORE_INDEX, SegmentationDataset, identity_lookup, label_lookup, require_dir

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# Official labelIds (0..33) -> trainIds; ids not listed (unlabeled, ego vehicle, ..., trailer) are ignored.
_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LABEL_ID_TO_TRAIN_ID = {label_id: _TRAIN_IDS.get(label_id, IGNORE_INDEX) for label_id in range(34)}
CITYSCAPES_LABEL_ID_LOOKUP = label_lookup(LABEL_ID_TO_TRAIN_ID)
CITYSCAPES_TRAIN_ID_LOOKUP = identity_lookup(len(CITYSCAPES_CLASSES))


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations, 19 train classes; ``split`` in train / val / test."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    lookup = CITYSCAPES_LABEL_ID_LOOKUP

    def find_samples(self) -> list[tuple[Path, Path]]:
        image_dir = require_dir(self.root / "leftImg8bit" / self.split)
        label_dir = self.root / "gtFine" / self.split
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        stems = [(path.parent.name, path.name[: -len("_leftImg8bit.png")]) for path in images]
        train_ids = [label_dir / city / f"{stem}_gtFine_labelTrainIds.png" for city, stem in stems]
        self.uses_train_ids = bool(train_ids) and all(path.is_file() for path in train_ids)
        if self.uses_train_ids:
            self.lookup = CITYSCAPES_TRAIN_ID_LOOKUP
            return list(zip(images, train_ids))
        return [(image, label_dir / city / f"{stem}_gtFine_labelIds.png") for image, (city, stem) in zip(images, stems)]
