"""Class-uniform sampling: class first, uniformly, then an image containing it."""
from __future__ import annotations

import numpy as np
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


def official_build_epoch(images_of_class: list[list[int]], num_images: int, fraction: float, rng) -> list[int]:
    """The official DecoupleSegNet / GSCNN ``uniform.build_epoch`` with its ``random_sampling`` (numpy
    RNG; a "centroid" here is an image holding the class)."""

    def random_sampling(alist, num):
        indices = np.arange(len(alist))
        rng.shuffle(indices)
        return [alist[indices[i % len(alist)]] for i in range(num)]

    num_per_class = int((num_images * fraction) / len(images_of_class))
    num_rand = num_images - num_per_class * len(images_of_class)
    imgs_uniform = random_sampling(list(range(num_images)), num_rand)
    for centroids in images_of_class:
        if centroids:
            imgs_uniform.extend(random_sampling(centroids, num_per_class))
    return imgs_uniform


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_epoch_follows_the_official_build_epoch(fraction):
    # 12 images, 3 classes, all present: class 0 in image 3 only, class 1 in images 0-5, class 2 everywhere.
    presence = torch.zeros(12, 3, dtype=torch.bool)
    presence[3, 0] = presence[:6, 1] = presence[:, 2] = True
    images_of_class = [presence[:, k].nonzero().flatten().tolist() for k in range(3)]
    sampler = ClassUniformSampler(presence, fraction=fraction)
    generator, rng, epochs = torch.Generator().manual_seed(0), np.random.default_rng(0), 3000
    ours, official = np.zeros(12), np.zeros(12)
    for _ in range(epochs):
        epoch = sampler.epoch(generator)
        reference = official_build_epoch(images_of_class, 12, fraction, rng)
        assert len(epoch) == len(reference) == 12
        ours += np.bincount(epoch, minlength=12)
        official += np.bincount(reference, minlength=12)
    # Mean draws per image and epoch; image 3 (the rare class): (4 * 1 + 4 / 6 + 4 / 12 + 0) = 5.0 at
    # fraction 1 (4 per class, no random part), (2 + 2 / 6 + 2 / 12 + 6 / 12) = 3.0 at fraction 0.5.
    assert ours[3] / epochs == pytest.approx({0.5: 3.0, 1.0: 5.0}[fraction], abs=0.05)
    np.testing.assert_allclose(ours / epochs, official / epochs, atol=0.06)


def test_wrap_around_and_random_part_without_replacement():
    presence = torch.zeros(8, 2, dtype=torch.bool)
    presence[0, 0] = presence[:, 1] = True
    epoch = ClassUniformSampler(presence, fraction=0.5, generator=torch.Generator().manual_seed(1)).epoch()
    # int(8 * 0.5 / 2) = 2 per class: image 0 twice for class 0 (wrapped), 2 distinct images of class
    # 1, and 4 distinct random images: image 0 at least twice, no image more than 4 times.
    counts = torch.bincount(torch.tensor(epoch), minlength=8)
    assert len(epoch) == 8 and counts[0] >= 2 and counts.max() <= 4
    with pytest.raises(ValueError, match="fraction"):
        ClassUniformSampler(presence, fraction=1.5)
