"""CamVid in the SegNet layout: {train,val,test}/*.png with {train,val,test}annot/*.png.

11 classes stored as 0..10; 11 is "void" (unlabelled) and is ignored (-> 255).
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import SegmentationDataset, identity_lookup, require_dir

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip

CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip

VOID_ID = 11


class CamVid(SegmentationDataset):
    """CamVid, 11 classes, void ignored."""

    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE
    lookup = identity_lookup(len(CAMVID_CLASSES), ignored=(VOID_ID, 255))

    def find_samples(self) -> list[tuple[Path, Path]]:
        images = sorted(require_dir(self.root / self.split).glob("*.png"))
        return [(image, self.root / f"{self.split}annot" / image.name) for image in images]
