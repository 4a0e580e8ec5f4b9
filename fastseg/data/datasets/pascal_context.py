"""PASCAL Context, 59 classes, in the layout of mmsegmentation's converter.

VOCdevkit/VOC2010/JPEGImages/*.jpg with VOCdevkit/VOC2010/SegmentationClassContext/*.png, and the split
lists VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt (one image id per line). The PNGs
store 0 for background (the classes outside the 59) and 1..59 for the classes; background is ignored:
0 -> 255, k -> k-1 (the 59-class protocol without background).
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import SegmentationDataset, bit_palette, reduce_zero_lookup

PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip


class PascalContext(SegmentationDataset):
    """PASCAL Context 59 classes (background ignored); ``split`` names a file in ImageSets/SegmentationContext."""

    classes = PASCAL_CONTEXT_CLASSES
    palette = bit_palette(len(PASCAL_CONTEXT_CLASSES))
    lookup = reduce_zero_lookup(len(PASCAL_CONTEXT_CLASSES))

    def find_samples(self) -> list[tuple[Path, Path]]:
        base = self.root / "VOCdevkit" / "VOC2010"
        split_file = base / "ImageSets" / "SegmentationContext" / f"{self.split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"PASCAL Context split list not found: {split_file}")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        return [(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClassContext" / f"{i}.png") for i in ids]
