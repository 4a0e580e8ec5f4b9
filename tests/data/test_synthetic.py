"""The built-in synthetic street scenes: determinism, class coverage, thin objects, occlusion, shapes."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from fastseg.data import SyntheticStreetScenes
from fastseg.data.synthetic import BUILDING, CAR, PERSON, POLE, SIGN, SYNTHETIC_CLASSES, VEGETATION
from fastseg.data.transforms import (
    ColorJitter,
    Compose,
    GaussianBlur,
    Normalize,
    Pad,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
)


def test_shapes_and_dtypes():
    seed = torch.randint(1000, ()).item()
    image, label = SyntheticStreetScenes("train", length=4, size=(64, 96), seed=seed)[3]
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    assert label.shape == (64, 96) and label.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 1
    assert 0 <= label.min() and label.max() < len(SYNTHETIC_CLASSES)


def test_deterministic_by_seed_split_and_index():
    seed = torch.randint(1000, ()).item()
    a = SyntheticStreetScenes("train", length=8, seed=seed)
    b = SyntheticStreetScenes("train", length=8, seed=seed)
    for index in (5, 2):
        assert all(torch.equal(x, y) for x, y in zip(a[index], b[index]))
    assert not torch.equal(a[2][1], a[5][1])
    assert not torch.equal(a[2][1], SyntheticStreetScenes("val", length=8, seed=seed)[2][1])
    assert not torch.equal(a[2][1], SyntheticStreetScenes("train", length=8, seed=seed + 1)[2][1])


def test_every_class_appears_within_a_few_samples():
    dataset = SyntheticStreetScenes("train", length=6, seed=torch.randint(1000, ()).item())
    seen = torch.zeros(len(SYNTHETIC_CLASSES), dtype=torch.bool)
    for index in range(len(dataset)):
        seen[dataset[index][1].unique()] = True
    assert seen.all(), [name for name, present in zip(SYNTHETIC_CLASSES, seen) if not present]


def test_thin_poles_and_small_objects():
    dataset = SyntheticStreetScenes("train", length=4, seed=torch.randint(1000, ()).item())
    labels = [dataset[index][1] for index in range(len(dataset))]
    assert sum(bool((label == POLE).any()) for label in labels) >= 3  # a pole may hide behind a near car
    heights = []
    for label in labels:
        poles = label == POLE
        assert poles.sum(dim=1).max() <= 9  # at most 3 poles of at most 3 pixels cross a row
        heights.append(int(poles.any(dim=1).sum()))
        for small in (SIGN, PERSON, CAR):
            assert (label == small).float().mean() < 0.25
    assert max(heights) >= 12  # thin and tall (an occluded pole may show only a stub)


def _in_front(label: torch.Tensor, front: int, back: int, dim: int) -> bool:
    """Whether some line of ``label`` along ``dim`` (0: columns, 1: rows) has ``back`` on both sides of ``front``."""
    lines = label if dim == 1 else label.T
    for line in lines:
        front_at, back_at = (line == front).nonzero().flatten(), (line == back).nonzero().flatten()
        if front_at.numel() and back_at.numel() and back_at.min() < front_at.min() and back_at.max() > front_at.max():
            return True
    return False


def test_occlusion():
    """Trees hide parts of buildings (building above and below a crown), and objects hide other objects."""
    dataset = SyntheticStreetScenes("train", length=8, seed=torch.randint(1000, ()).item())
    labels = [dataset[index][1] for index in range(len(dataset))]
    assert any(_in_front(label, VEGETATION, BUILDING, dim=0) for label in labels)
    objects = (CAR, PERSON, POLE, SIGN)
    assert any(_in_front(label, f, b, dim=1) for label in labels for f in objects for b in objects if f != b)


def test_training_pipeline_batches():
    """The default training data: synthetic scenes through the joint transforms into a DataLoader."""
    pipeline = Compose(
        [
            RandomScale((0.5, 2.0)),
            RandomCrop((48, 64), cat_max_ratio=0.75),
            Pad((48, 64)),
            RandomHorizontalFlip(),
            ColorJitter(),
            GaussianBlur(),
            Normalize(),
        ]
    )
    dataset = SyntheticStreetScenes("train", length=4, size=(64, 96), transforms=pipeline)
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 48, 64) and images.dtype == torch.float32 and torch.isfinite(images).all()
    assert labels.shape == (4, 48, 64) and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < len(SYNTHETIC_CLASSES)) | (labels == 255)).all()
