"""Class-uniform epochs in the training stream: sharded like the plain order, resumable, seeded; and the
``data.class_uniform`` option of a run config."""
from __future__ import annotations

import pytest
import torch

from fastseg.data import ClassUniformSampler, class_presence
from fastseg.engine.builders import build_dataset_from_config
from fastseg.engine import train_loader
from fastseg.engine import trainer as trainer_module
from fastseg.engine.train_loader import InfiniteBatchSampler, class_uniform_from_config
from fastseg.engine.trainer import Trainer


def rare_class_presence(num_images: int = 10) -> torch.Tensor:
    presence = torch.zeros(num_images, 3, dtype=torch.bool)
    presence[:, 0] = True
    presence[num_images - 1, 1] = True  # the rare class, in the last image only
    presence[: num_images // 2, 2] = True
    return presence


def batches(sampler: InfiniteBatchSampler, steps: int) -> list[list[tuple[int, int]]]:
    stream = iter(sampler)
    return [next(stream) for _ in range(steps)]


def test_class_uniform_order_is_sharded_resumable_and_seeded():
    sampler = ClassUniformSampler(rare_class_presence(), fraction=0.5)
    single = batches(InfiniteBatchSampler(10, 4, seed=3, class_uniform=sampler), 12)
    ranks = [batches(InfiniteBatchSampler(10, 4, rank, 2, seed=3, class_uniform=sampler), 12) for rank in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == single  # rank r takes the r-th half of each global batch
    resumed = batches(InfiniteBatchSampler(10, 4, seed=3, start_step=5, class_uniform=sampler), 7)
    assert resumed == single[5:]
    assert single != batches(InfiniteBatchSampler(10, 4, seed=4, class_uniform=sampler), 12)
    # An epoch of 10 is one class_uniform.epoch() of the (seed, epoch) generator, so it draws the rare
    # image int(10 * 0.5 / 3) = 1 time at least; a permutation would draw it exactly once.
    keys = [key for batch in single for key in batch][:30]
    for epoch in range(3):
        indices = [index for e, index in keys if e == epoch]
        assert len(indices) == 10 and indices.count(9) >= 1
    draws = [index for batch in batches(InfiniteBatchSampler(10, 10, seed=0, class_uniform=sampler), 400) for _, index in batch]
    # P(image 9) per draw: (1 [class 1] + 1/10 [class 0] + 1 * 0 [class 2] + 7/10 [random]) / 10 = 0.18.
    assert draws.count(9) / len(draws) == pytest.approx(0.18, abs=0.01)
    with pytest.raises(ValueError, match="class-uniform epoch has 10"):
        InfiniteBatchSampler(12, 4, class_uniform=sampler)


def test_class_uniform_option_of_a_run_config(tmp_path, make_tiny_config, monkeypatch):
    assert class_uniform_from_config(make_tiny_config()) is None
    config = make_tiny_config("data.class_uniform=0.5", "train.iterations=2")
    sampler = class_uniform_from_config(config)
    unaugmented = build_dataset_from_config(config, "train", augment=False)
    expected = class_presence(unaugmented, config["data"]["num_classes"])
    assert sampler.fraction == 0.5 and len(sampler) == len(unaugmented) == 12
    assert [images.tolist() for images in sampler.images_of_class] == [
        expected[:, k].nonzero().flatten().tolist() for k in range(expected.shape[1]) if expected[:, k].any()
    ]
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.class_uniform is not None and trainer.class_uniform.fraction == 0.5
    loaders = []

    def recording_loader(*args, **kwargs):
        loaders.append(train_loader.build_train_loader(*args, **kwargs))
        return loaders[-1]

    monkeypatch.setattr(trainer_module, "build_train_loader", recording_loader)
    trainer.train()
    assert trainer.iteration == 2 and loaders[0].batch_sampler.class_uniform is trainer.class_uniform
