"""Writers of tiny dataset fixtures in the real on-disk layouts (PNG / JPEG via PIL)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random RGB image; PNG (lossless) or JPEG by suffix. Returns the pixels written (H,W,3) uint8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def write_label(path: Path, values: np.ndarray, mode: str = "L") -> None:
    """A single-channel label PNG holding ``values`` (H,W); mode "L" (8-bit grey) or "P" (palette, VOC-style)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = values.shape
    image = Image.frombytes(mode, (width, height), values.astype(np.uint8).tobytes())
    if mode == "P":
        image.putpalette([(37 * i) % 256 for i in range(768)])
    image.save(path)


def random_label(rng: np.random.Generator, height: int, width: int, values: list[int]) -> np.ndarray:
    """(H,W) array drawn from ``values``, each value present at least once."""
    label = rng.choice(values, size=(height, width))
    label.flat[: len(values)] = values
    return label
