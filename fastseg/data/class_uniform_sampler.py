"""Class-uniform sampling: a share of each epoch's samples picks a class uniformly, then an image
that contains it.

Rare classes (poles, signs, riders) are then seen about as often as frequent ones. ``class_presence``
scans a dataset once to know which image holds which class. The epoch is built by the rule of the
official DecoupleSegNet / GSCNN code (``datasets/uniform.py: build_epoch``, ``class_uniform_pct`` 0.5):
``int(N * fraction / K)`` images per class and the rest drawn from all images, each part a shuffled
list wrapped around when it needs more items than it has, the whole epoch shuffled. Two departures:
K counts only the classes some image holds and the random part fills the epoch to N (the official
epoch is shorter by the share of absent classes); and the official code also centres the crop of a
class-uniform sample on a pixel of its class, where ours crops as for any sample.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler


def class_presence(dataset: Dataset, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(N, K) bool: whether label ``n`` of ``dataset`` (its samples' second element) holds class ``k``.

    Scan the dataset without random transforms, so that the presence describes whole images.
    """
    presence = torch.zeros(len(dataset), num_classes, dtype=torch.bool)
    for index in range(len(dataset)):
        label = dataset[index][1]
        values = label[(label != ignore_index) & (label >= 0) & (label < num_classes)]
        presence[index, values.unique()] = True
    return presence


def wrap_sample(items: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` items of a random permutation of ``items`` (1-D), wrapping around when ``count``
    exceeds its length (the official ``random_sampling``)."""
    shuffled = items[torch.randperm(items.numel(), generator=generator)]
    return shuffled[torch.arange(count) % items.numel()]


class ClassUniformSampler(Sampler[int]):
    """Yields one epoch of ``num_samples`` dataset indices: ``fraction`` of them class-uniform (a class
    among those present in any image, then an image containing it), the rest uniform over all images.

    Args:
        presence: (N, K) bool from ``class_presence``.
        num_samples: indices per epoch (default N).
        generator: torch.Generator for the draws (global RNG when None).
        fraction: the class-uniform share in [0, 1] (the official scripts' 0.5; 1 = all of them).
    """

    def __init__(
        self,
        presence: Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        fraction: float = 1.0,
    ) -> None:
        if presence.dim() != 2 or presence.dtype != torch.bool:
            raise ValueError(f"presence must be an (N, K) bool tensor, got {presence.dtype} {tuple(presence.shape)}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.images_of_class = [presence[:, k].nonzero().flatten() for k in range(presence.shape[1])]
        self.images_of_class = [images for images in self.images_of_class if images.numel() > 0]
        if not self.images_of_class:
            raise ValueError("presence holds no class in any image")
        self.num_images = presence.shape[0]
        self.num_samples = self.num_images if num_samples is None else num_samples
        self.generator = generator
        self.fraction = fraction

    def __len__(self) -> int:
        return self.num_samples

    def epoch(self, generator: torch.Generator | None = None) -> list[int]:
        """One epoch's indices, drawn from ``generator`` (build_epoch's rule, see the module docstring)."""
        per_class = int(self.num_samples * self.fraction / len(self.images_of_class))
        num_random = self.num_samples - per_class * len(self.images_of_class)
        parts = [wrap_sample(torch.arange(self.num_images), num_random, generator)]
        parts += [wrap_sample(images, per_class, generator) for images in self.images_of_class]
        order = torch.cat(parts)
        return order[torch.randperm(order.numel(), generator=generator)].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch(self.generator))
