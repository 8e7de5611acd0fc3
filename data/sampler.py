"""A distributed, resumable sampler that hands every sample its own augmentation seed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffle like ``DistributedSampler`` (randperm seeded with seed + epoch, padded, rank::world)
    and yield ``(index, sample_seed)`` pairs.

    The sample seed depends only on (seed, epoch, position in the shuffled order), so a sample's
    augmentation is the same whichever worker, rank count or restart produces it. ``set_epoch(e,
    start_batch=b)`` skips the first b batches of this rank: a resume continues mid-epoch exactly.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"the dataset has {num_samples} images, fewer than one global batch "
                f"({batch_size} x {world_size} processes)"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.per_rank = -(-num_samples // world_size)  # padded to a multiple of the world size

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.num_samples]
        epoch_seed = (self.seed * 1_000_003 + self.epoch) << 32
        first = self.start_batch * self.batch_size
        last = self.batches_per_epoch * self.batch_size
        for local in range(first, last):
            position = self.rank + local * self.world_size
            yield order[position], epoch_seed + position
