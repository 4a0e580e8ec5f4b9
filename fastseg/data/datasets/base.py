"""Common base of the on-disk segmentation datasets: file pairs, image/label decoding, bad-sample handling.

A sample is ``(image, label)``: image float32 (3,H,W) RGB in [0, 1], label int64 (H,W) holding train ids
in [0, K) and ``ignore_index`` (255) for ignored pixels. Transforms are applied jointly as
``transforms(image, label)``.
"""
from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IGNORE_INDEX = 255
LOGGER = logging.getLogger(__name__)

JointTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class BadSampleError(RuntimeError):
    """An image or label file that is missing, unreadable or inconsistent; the message names the file."""


def label_lookup(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry table from stored label values to train ids; -1 marks values that must not occur."""
    table = np.full(256, -1, dtype=np.int64)
    for stored, train_id in mapping.items():
        table[stored] = train_id
    return table


def identity_lookup(num_classes: int, ignored: Sequence[int] = (IGNORE_INDEX,)) -> np.ndarray:
    """Values 0..K-1 are train ids already; each value in ``ignored`` maps to 255."""
    mapping = {k: k for k in range(num_classes)}
    mapping.update({v: IGNORE_INDEX for v in ignored})
    return label_lookup(mapping)


def reduce_zero_lookup(num_classes: int) -> np.ndarray:
    """"Reduce zero label": 0 (unlabelled / background) -> 255, k -> k-1 for k in 1..K, 255 stays 255."""
    mapping = {k + 1: k for k in range(num_classes)}
    mapping.update({0: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX})
    return label_lookup(mapping)


def bit_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaved colour map, skipping black: class k gets the colour of VOC index k+1."""
    colours = []
    for index in range(1, num_classes + 1):
        rgb = [0, 0, 0]
        for shift in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


def read_image(path: Path) -> Tensor:
    """An RGB image file as float32 (3,H,W) in [0, 1]; ``BadSampleError`` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def read_label(path: Path, lookup: np.ndarray) -> Tensor:
    """A single-channel label PNG mapped through ``lookup`` to int64 (H,W) train ids."""
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise BadSampleError(f"cannot read label {path}: {err}") from err
    if array.ndim != 2:
        raise BadSampleError(f"label {path} has shape {array.shape}: expected one channel of class indices")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BadSampleError(f"label {path} has values outside 0..255 (max {array.max()})")
    mapped = lookup[array.astype(np.int64)]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(array[mapped < 0]).tolist()))
        raise BadSampleError(f"label {path} holds values {bad} that are not valid for this dataset")
    return torch.from_numpy(mapped)


def require_dir(path: Path) -> Path:
    """``path`` if it is a directory, else FileNotFoundError naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {path}")
    return path


class SegmentationDataset(Dataset, abc.ABC):
    """Base of the file-backed datasets.

    Subclasses set ``classes``, ``palette`` and ``lookup`` (stored label value -> train id) and implement
    ``find_samples()`` returning ``(image_path, label_path)`` pairs. With ``skip_bad=True`` a sample whose
    files are missing or corrupt is logged, counted in ``num_skipped`` and replaced by the next readable one;
    otherwise ``BadSampleError`` names the file. The record of skipped samples is one flag per sample in
    shared memory, so the count read in the main process includes what DataLoader workers skipped.
    """

    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    lookup: np.ndarray
    ignore_index = IGNORE_INDEX

    def __init__(
        self, root: str | Path, split: str = "train", transforms: JointTransform | None = None, skip_bad: bool = False
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.skip_bad = skip_bad
        self.samples = sorted(self.find_samples())
        if not self.samples:
            raise FileNotFoundError(f"{type(self).__name__}: no samples for split {split!r} under {self.root}")
        # (N,) bool: sample i was found unreadable; shared with the workers (each write is idempotent)
        self.skipped = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_skipped(self) -> int:
        """How many distinct samples were skipped as unreadable so far, by this process or its workers."""
        return int(self.skipped.sum())

    @abc.abstractmethod
    def find_samples(self) -> list[tuple[Path, Path]]:
        """(image path, label path) of every sample of the split."""

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """Sample ``index`` decoded, before transforms; ``BadSampleError`` naming the faulty file."""
        image_path, label_path = self.samples[index]
        if not label_path.is_file():
            raise BadSampleError(f"label file not found: {label_path} (for image {image_path})")
        image = read_image(image_path)
        label = read_label(label_path, self.lookup)
        if image.shape[1:] != label.shape:
            raise BadSampleError(
                f"image {image_path} is {tuple(image.shape[1:])} but label {label_path} is {tuple(label.shape)}"
            )
        return image, label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        for offset in range(len(self)):
            current = (index + offset) % len(self)
            try:
                image, label = self.load(current)
            except BadSampleError as err:
                if not self.skip_bad:
                    raise
                self.skipped[current] = True
                LOGGER.warning("skipping sample %d: %s", current, err)
                continue
            if self.transforms is not None:
                image, label = self.transforms(image, label)
            return image, label
        raise BadSampleError(f"{type(self).__name__}: every sample under {self.root} is unreadable")
