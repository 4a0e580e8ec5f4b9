"""A generic folder dataset: <root>/<split>/images/*.{jpg,png} with <root>/<split>/masks/<stem>.png.

<root>/classes.txt lists one class name per line; mask value k is the class on line k (0-based), 255 is
ignored and any other value is an error. ``split`` may be ``""`` for <root>/images + <root>/masks.
"""
from __future__ import annotations

from pathlib import Path

from fastseg.data.datasets.base import SegmentationDataset, bit_palette, identity_lookup, require_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class FolderDataset(SegmentationDataset):
    """images/ + masks/ + classes.txt; coloured with the PASCAL VOC colour map."""

    def find_samples(self) -> list[tuple[Path, Path]]:
        names_file = self.root / "classes.txt"
        if not names_file.is_file():
            raise FileNotFoundError(f"class list not found: {names_file}")
        self.classes = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if not 0 < len(self.classes) <= 255:
            raise ValueError(f"{names_file} must list between 1 and 255 classes, found {len(self.classes)}")
        self.palette = bit_palette(len(self.classes))
        self.lookup = identity_lookup(len(self.classes))
        base = self.root / self.split
        images = sorted(p for p in require_dir(base / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [(image, base / "masks" / f"{image.stem}.png") for image in images]
