"""Class-uniform sampling: class first, uniformly, then an image containing it."""
from __future__ import annotations

import pytest
import torch

from fastseg.data import ClassUniformSampler, class_presence


def test_class_presence():
    labels = [torch.tensor([[0, 0], [2, 255]]), torch.tensor([[1, 1], [1, 1]])]
    dataset = [(torch.zeros(3, 2, 2), label) for label in labels]
    presence = class_presence(dataset, num_classes=4)
    assert presence.tolist() == [[True, False, True, False], [False, True, False, False]]


def test_rare_class_image_drawn_about_half_the_time():
    num_images = 10
    rare = torch.randint(num_images, ()).item()
    presence = torch.zeros(num_images, 3, dtype=torch.bool)
    presence[:, 0] = True  # class 0 everywhere
    presence[rare, 1] = True  # class 1 in one image only; class 2 nowhere (not drawable)
    draws = torch.tensor(list(ClassUniformSampler(presence, num_samples=4000)))
    assert len(draws) == 4000 and draws.min() >= 0 and draws.max() < num_images
    # P(rare) = 1/2 (class 1) + 1/2 * 1/10 (class 0) = 0.55; std of the estimate ~ 0.008.
    assert abs((draws == rare).float().mean().item() - 0.55) < 0.04


def test_seeded_and_validated():
    presence = torch.rand(6, 4) < 0.5
    presence[0] = True
    a = list(ClassUniformSampler(presence, 20, generator=torch.Generator().manual_seed(3)))
    b = list(ClassUniformSampler(presence, 20, generator=torch.Generator().manual_seed(3)))
    assert a == b and len(ClassUniformSampler(presence)) == 6
    with pytest.raises(ValueError, match="presence"):
        ClassUniformSampler(torch.zeros(3, 2, dtype=torch.bool))
