"""Pictures of predictions: palettes, colourised masks, overlays on the image, and the PNG files of them.

A palette is a sequence of (R, G, B) colours, one per class. Images are float (3, H, W) RGB in [0, 1]
(use :func:`denormalize` on normalised network inputs); label maps are int (H, W) train ids, where
``ignore_index`` is drawn black.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fastseg.data.datasets.ade20k import ADE20K_PALETTE
from fastseg.data.datasets.base import bit_palette
from fastseg.data.datasets.cityscapes import CITYSCAPES_PALETTE
from fastseg.data.datasets.registry import FILE_DATASETS
from fastseg.data.synthetic import SyntheticStreetScenes

Palette = Sequence[tuple[int, int, int]]
PALETTES: dict[str, Palette] = {"cityscapes": CITYSCAPES_PALETTE, "ade20k": ADE20K_PALETTE}
IGNORE_COLOR = (0, 0, 0)


def dataset_palette(dataset: str, num_classes: int) -> Palette:
    """The colours of dataset ``dataset`` (a ``build_dataset`` name); datasets whose classes are only
    known on disk (``folder``) get the VOC bit palette."""
    cls = SyntheticStreetScenes if dataset == "synthetic" else FILE_DATASETS.get(dataset)
    if cls is None:
        raise ValueError(f"unknown dataset {dataset!r} for a palette; choose one of synthetic, {', '.join(FILE_DATASETS)}")
    return tuple(cls.palette) or bit_palette(num_classes)


def get_palette(name: str, num_classes: int, dataset: str | None = None) -> Palette:
    """Palette ``name``: "cityscapes", "ade20k", or "dataset" (that of the config's ``dataset``); it must
    have a colour for each of the ``num_classes`` classes."""
    if name == "dataset":
        if dataset is None:
            raise ValueError("palette 'dataset' needs the dataset name")
        palette = dataset_palette(dataset, num_classes)
    elif name in PALETTES:
        palette = PALETTES[name]
    else:
        raise ValueError(f"unknown palette {name!r}; choose one of {', '.join([*PALETTES, 'dataset'])}")
    if len(palette) < num_classes:
        raise ValueError(f"palette {name!r} has {len(palette)} colours but the model predicts {num_classes} classes")
    return palette


def colorize(labels: Tensor, palette: Palette, ignore_index: int = 255) -> Tensor:
    """uint8 (..., 3) RGB colours of int labels (...); ``ignore_index`` and values without a colour are black."""
    table = torch.tensor([*palette, IGNORE_COLOR], dtype=torch.uint8, device=labels.device)
    labels = labels.long()
    known = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    return table[torch.where(known, labels, len(palette))]


def to_uint8_image(image: Tensor) -> Tensor:
    """uint8 (H, W, 3) of a float (3, H, W) RGB image in [0, 1]."""
    return image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize``: images (B, 3, H, W) or (3, H, W) back to RGB in [0, 1]."""
    shape = (-1, 1, 1)
    return images * torch.tensor(std, dtype=images.dtype, device=images.device).view(shape) + torch.tensor(
        mean, dtype=images.dtype, device=images.device
    ).view(shape)


def overlay(image: Tensor, mask: Tensor, opacity: float = 0.5) -> Tensor:
    """uint8 (H, W, 3): ``(1 - opacity) * image + opacity * mask`` of uint8 (H, W, 3) RGB image and mask."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    blended = (1 - opacity) * image.float() + opacity * mask.float()
    return blended.round().clamp(0, 255).to(torch.uint8)


def write_png(array: Tensor, path: Path) -> None:
    """Write a uint8 (H, W) or (H, W, 3) tensor as a PNG."""
    Image.fromarray(np.ascontiguousarray(array.cpu().numpy())).save(path)


def save_predictions(
    images: Tensor,
    predictions: Tensor,
    palette: Palette,
    directory: str | os.PathLike,
    names: Sequence[str] | None = None,
    targets: Tensor | None = None,
    opacity: float = 0.5,
    ignore_index: int = 255,
) -> list[Path]:
    """Write, for each image b of images (B, 3, H, W) RGB in [0, 1] and predictions (B, H, W) train ids:
    ``<name>_mask.png`` (colourised prediction), ``<name>_overlay.png`` (mask blended on the image with
    ``opacity``) and ``<name>_labels.png`` (the raw train ids, 8-bit); with ``targets`` (B, H, W) also
    ``<name>_target.png`` (the colourised ground truth). ``names`` default to 0, 1, ...; returns the paths.
    """
    if images.dim() != 4 or predictions.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"images {tuple(images.shape)} must be (B, 3, H, W) and predictions (B, H, W), got {tuple(predictions.shape)}")
    if len(palette) > 255:
        raise ValueError(f"{len(palette)} classes do not fit the 8-bit label PNG")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = [str(b) for b in range(images.shape[0])] if names is None else list(names)
    written = []
    for b, name in enumerate(names):
        mask = colorize(predictions[b], palette, ignore_index)
        pictures = {
            "mask": mask,
            "overlay": overlay(to_uint8_image(images[b]), mask, opacity),
            "labels": predictions[b].clamp(0, 255).to(torch.uint8),
        }
        if targets is not None:
            pictures["target"] = colorize(targets[b], palette, ignore_index)
        for kind, array in pictures.items():
            path = directory / f"{name}_{kind}.png"
            write_png(array, path)
            written.append(path)
    return written
