"""The training data stream: an endless, shardable, restartable order of samples with seeded augmentation.

Resuming a run must feed the same batches as the uninterrupted run, whatever the number of DataLoader
workers. Hence:
- :class:`InfiniteBatchSampler` walks one global order of samples (a fresh permutation per epoch, seeded
  by ``(seed, epoch)``); step ``s`` takes global positions ``[s * B, (s + 1) * B)`` and rank ``r`` of
  ``W`` the ``r``-th of ``W`` equal slices of them, so a DDP run sees exactly the batches of a
  single-process run with the same global batch ``B``, and the position after step ``s`` is ``s`` itself;
- :class:`SeededSamples` draws each sample's random augmentation from a torch generator seeded by
  ``(seed, epoch, index)``, independent of which worker loads it or when.

With class-uniform sampling (config ``data.class_uniform``: the class-uniform share of each epoch,
0.5 in the official DecoupleSegNet and FENet scripts) the epoch order is a
:class:`~fastseg.data.ClassUniformSampler` epoch drawn from the same ``(seed, epoch)`` generator,
so it stays resumable and sharded the same way.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fastseg.data import ClassUniformSampler, class_presence
from fastseg.engine.builders import build_dataset_from_config

SampleKey = tuple[int, int]  # (epoch, dataset index)


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class InfiniteBatchSampler(Sampler[list[SampleKey]]):
    """Endless per-rank batches of ``(epoch, index)`` keys, starting at step ``start_step``.

    Args:
        dataset_size: number of samples N.
        global_batch: samples per step over all ranks (a multiple of ``world_size``).
        rank, world_size: this process's share.
        seed: seeds the per-epoch permutations.
        shuffle: permute each epoch (else the natural order).
        start_step: the first step to yield (the iteration a resumed run restarts at).
        class_uniform: draws each epoch's order (``dataset_size`` indices) instead of a permutation.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_step: int = 0,
        class_uniform: ClassUniformSampler | None = None,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("the training dataset is empty")
        if class_uniform is not None and len(class_uniform) != dataset_size:
            raise ValueError(f"the class-uniform epoch has {len(class_uniform)} samples, the dataset {dataset_size}")
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        self.dataset_size, self.global_batch = dataset_size, global_batch
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.start_step = seed, shuffle, start_step
        self.class_uniform = class_uniform
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        """The dataset indices of ``epoch`` in the order they are consumed."""
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(_seed(self.seed, epoch))
            if self.class_uniform is not None:
                self._order = (epoch, self.class_uniform.epoch(generator))
            elif self.shuffle:
                self._order = (epoch, torch.randperm(self.dataset_size, generator=generator).tolist())
            else:
                self._order = (epoch, list(range(self.dataset_size)))
        return self._order[1]

    def batch(self, step: int) -> list[SampleKey]:
        """This rank's keys of global step ``step``."""
        per_rank = self.global_batch // self.world_size
        first = step * self.global_batch + self.rank * per_rank
        keys = []
        for position in range(first, first + per_rank):
            epoch, offset = divmod(position, self.dataset_size)
            keys.append((epoch, self.order(epoch)[offset]))
        return keys

    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)`` keys; the sample's transforms draw from torch's RNG seeded
    by ``(seed, epoch, index)``, inside a forked RNG so the caller's RNG state is untouched.

    A sample is made on one thread, as in a DataLoader worker: bilinear resizing rounds differently
    with another thread count, which would make the main process's samples (``workers=0``) differ in
    the last bit from the workers' ones."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Any:
        epoch, index = key
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.seed, epoch, index))
                return self.dataset[index]
        finally:
            torch.set_num_threads(threads)


def build_train_loader(
    dataset: Dataset,
    global_batch: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    start_step: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    class_uniform: ClassUniformSampler | None = None,
) -> DataLoader:
    """An endless loader of this rank's batches from step ``start_step`` on (see the module docstring)."""
    sampler = InfiniteBatchSampler(
        len(dataset), global_batch, rank, world_size, seed, start_step=start_step, class_uniform=class_uniform
    )
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        # The loader's own generator: creating its iterator does not draw from the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def class_uniform_from_config(config: Mapping[str, Any]) -> ClassUniformSampler | None:
    """The sampler of ``data.class_uniform`` (a share in (0, 1]; absent or 0: None) over the train
    split, whose labels are scanned once without the random augmentation (every rank scans the same)."""
    data = config["data"]
    fraction = float(data.get("class_uniform") or 0)
    if fraction == 0:
        return None
    images = build_dataset_from_config(config, "train", augment=False)
    presence = class_presence(images, data["num_classes"], data.get("ignore_index", 255))
    return ClassUniformSampler(presence, fraction=fraction)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...``: each sample evaluated once over all ranks (no padding)."""

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, dataset_size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def build_eval_loader(
    dataset: Dataset, batch_size: int = 1, *, rank: int = 0, world_size: int = 1, workers: int = 0
) -> DataLoader:
    """This rank's shard of ``dataset`` in order, for evaluation."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size), num_workers=workers
    )
