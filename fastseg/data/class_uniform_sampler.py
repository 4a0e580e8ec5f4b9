"""Class-uniform sampling: each draw picks a class uniformly, then an image that contains it.

Rare classes (poles, signs, riders) are then seen about as often as frequent ones. ``class_presence``
scans a dataset once to know which image holds which class.
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


class ClassUniformSampler(Sampler[int]):
    """Yields ``num_samples`` dataset indices: a class uniform over the classes present in any image,
    then an image uniform over the images containing it.

    Args:
        presence: (N, K) bool from ``class_presence``.
        num_samples: indices per epoch (default N).
        generator: torch.Generator for the draws (global RNG when None).
    """

    def __init__(self, presence: Tensor, num_samples: int | None = None, generator: torch.Generator | None = None):
        if presence.dim() != 2 or presence.dtype != torch.bool:
            raise ValueError(f"presence must be an (N, K) bool tensor, got {presence.dtype} {tuple(presence.shape)}")
        self.images_of_class = [presence[:, k].nonzero().flatten() for k in range(presence.shape[1])]
        self.images_of_class = [images for images in self.images_of_class if images.numel() > 0]
        if not self.images_of_class:
            raise ValueError("presence holds no class in any image")
        self.num_samples = presence.shape[0] if num_samples is None else num_samples
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        classes = torch.randint(len(self.images_of_class), (self.num_samples,), generator=self.generator)
        for cls in classes.tolist():
            images = self.images_of_class[cls]
            yield int(images[torch.randint(images.numel(), (), generator=self.generator)])
