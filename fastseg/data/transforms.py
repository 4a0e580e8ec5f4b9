"""Joint (image, label) transforms for segmentation training, mmsegmentation semantics.

Every transform is called as ``transform(image, label) -> (image, label)`` with image float (3,H,W) in
[0, 1] (before ``Normalize``) and label int64 (H,W). Geometric transforms move both together: bilinear
interpolation for the image, nearest for the label. Randomness comes from the ``generator`` given to the
transform (a ``torch.Generator``) or, when it is None, from torch's global RNG.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(p: float, generator: torch.Generator | None) -> bool:
    return torch.rand((), generator=generator).item() < p


def resize(image: Tensor, label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize to ``size`` (H, W): bilinear image (align_corners=False), nearest label (pixel-centre aligned)."""
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(label.dtype)
    return image, label


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label


class RandomScale:
    """Resize by a factor drawn uniformly from ``ratio_range`` (e.g. (0.5, 2.0)) times the input size.

    ``base_size`` (H, W), when given, replaces the input size as the size the ratio applies to.
    """

    def __init__(
        self,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        base_size: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range}")
        self.ratio_range, self.base_size, self.generator = ratio_range, base_size, generator

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        ratio = _uniform(*self.ratio_range, self.generator)
        height, width = self.base_size or image.shape[-2:]
        return resize(image, label, (max(1, round(height * ratio)), max(1, round(width * ratio))))


class RandomCrop:
    """Crop a random window of ``size`` (H, W), or the whole side where the input is smaller.

    With ``cat_max_ratio < 1`` (mmsegmentation semantics) up to 10 windows are drawn; the first one that
    holds at least two classes, none of them covering ``cat_max_ratio`` or more of its non-ignored pixels,
    is used, and the 10th otherwise.
    """

    def __init__(
        self,
        size: tuple[int, int],
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size, self.cat_max_ratio, self.ignore_index = tuple(size), cat_max_ratio, ignore_index
        self.generator = generator

    def _window(self, shape: Sequence[int]) -> tuple[int, int, int, int]:
        crop_h, crop_w = min(self.size[0], shape[0]), min(self.size[1], shape[1])
        top = int(torch.randint(shape[0] - crop_h + 1, (), generator=self.generator))
        left = int(torch.randint(shape[1] - crop_w + 1, (), generator=self.generator))
        return top, top + crop_h, left, left + crop_w

    def _acceptable(self, label: Tensor) -> bool:
        counts = torch.bincount(label[label != self.ignore_index].flatten())
        counts = counts[counts > 0]
        return counts.numel() > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        top, bottom, left, right = self._window(label.shape)
        if self.cat_max_ratio < 1:
            for _ in range(9):
                if self._acceptable(label[top:bottom, left:right]):
                    break
                top, bottom, left, right = self._window(label.shape)
        return image[:, top:bottom, left:right], label[top:bottom, left:right]


class Pad:
    """Pad the bottom and right to at least ``size`` (H, W): image with ``fill``, label with ``ignore_index``."""

    def __init__(self, size: tuple[int, int], fill: float = 0.0, ignore_index: int = IGNORE_INDEX) -> None:
        self.size, self.fill, self.ignore_index = tuple(size), fill, ignore_index

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        pad_h, pad_w = max(0, self.size[0] - label.shape[0]), max(0, self.size[1] - label.shape[1])
        if pad_h == 0 and pad_w == 0:
            return image, label
        image = F.pad(image, (0, pad_w, 0, pad_h), value=self.fill)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image, label


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p, self.generator = p, generator

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        if _chance(self.p, self.generator):
            return image.flip(-1), label.flip(-1)
        return image, label


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x], applied in random order.

    Contrast blends with the mean grey level, saturation with the greyscale image (ITU-R 601 luma);
    the image stays in [0, 1]. The label is unchanged.
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> None:
        self.amounts = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        self.generator = generator

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        order = torch.randperm(3, generator=self.generator).tolist()
        names = list(self.amounts)
        for name in (names[i] for i in order):
            amount = self.amounts[name]
            if amount <= 0:
                continue
            factor = _uniform(max(0.0, 1 - amount), 1 + amount, self.generator)
            grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
            if name == "brightness":
                image = image * factor
            elif name == "contrast":
                image = grey.mean() + factor * (image - grey.mean())
            else:
                image = grey + factor * (image - grey)
            image = image.clamp(0, 1)
        return image, label


class GaussianBlur:
    """With probability ``p``, blur the image with a Gaussian of sigma drawn from ``sigma_range`` (pixels).

    The kernel spans +-3 sigma (odd size), applied separably with reflect padding; the label is unchanged.
    """

    def __init__(
        self, sigma_range: tuple[float, float] = (0.1, 2.0), p: float = 0.5, generator: torch.Generator | None = None
    ) -> None:
        self.sigma_range, self.p, self.generator = sigma_range, p, generator

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        if not _chance(self.p, self.generator):
            return image, label
        sigma = _uniform(*self.sigma_range, self.generator)
        radius = min(max(1, math.ceil(3 * sigma)), min(image.shape[-2:]) - 1)
        taps = torch.arange(-radius, radius + 1, dtype=image.dtype)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = kernel / kernel.sum()
        channels = image.shape[0]
        out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
        return out[0], label


class Normalize:
    """``(image - mean) / std`` per channel; ImageNet statistics by default (image in [0, 1])."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        return (image - self.mean.to(image)) / self.std.to(image), label
