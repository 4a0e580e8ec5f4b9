"""COCO-Stuff 164k, 171 classes: images/{train2017,val2017}/*.jpg with annotations/{train2017,val2017}/*.png.

Two label encodings are supported, chosen per file:
- ``<stem>_labelTrainIds.png`` (mmsegmentation's converted labels): train ids 0..170, 255 ignored;
- ``<stem>.png`` (the official stuffthingmaps): raw ids 0..181 (COCO category id - 1), 255 unlabelled.
  The 11 ids of COCO thing categories that have no annotations are not valid; the other 171 ids are
  renumbered in order to train ids 0..170.
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    bit_palette,
    identity_lookup,
    label_lookup,
    require_dir,
)

COCO_STUFF_CLASSES = (
    # 80 things
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # 91 stuff
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain",
    "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other",
    "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood",
)  # fmt: skip

# Raw ids (category id - 1) of the COCO thing categories without annotations (ids 12, 26, 29, 30, 45, 66,
# 68, 69, 71, 83, 91).
_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_RAW_IDS = [raw for raw in range(182) if raw not in _UNUSED_RAW_IDS]
COCO_STUFF_RAW_LOOKUP = label_lookup({**dict(zip(_RAW_IDS, range(171))), IGNORE_INDEX: IGNORE_INDEX})
COCO_STUFF_TRAIN_ID_LOOKUP = identity_lookup(len(COCO_STUFF_CLASSES))

_SPLIT_DIRS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}


class COCOStuff(SegmentationDataset):
    """COCO-Stuff 164k (171 classes); the label encoding follows the file found (see the module doc)."""

    classes = COCO_STUFF_CLASSES
    palette = bit_palette(len(COCO_STUFF_CLASSES))

    def find_samples(self) -> list[tuple[Path, Path]]:
        if self.split not in _SPLIT_DIRS:
            raise ValueError(f"COCO-Stuff split must be one of {sorted(_SPLIT_DIRS)}, got {self.split!r}")
        folder = _SPLIT_DIRS[self.split]
        images = sorted(require_dir(self.root / "images" / folder).glob("*.jpg"))
        label_dir = self.root / "annotations" / folder
        self.uses_train_ids = bool(images) and (label_dir / f"{images[0].stem}_labelTrainIds.png").is_file()
        suffix = "_labelTrainIds.png" if self.uses_train_ids else ".png"
        self.lookup = COCO_STUFF_TRAIN_ID_LOOKUP if self.uses_train_ids else COCO_STUFF_RAW_LOOKUP
        return [(image, label_dir / f"{image.stem}{suffix}") for image in images]
