"""Data loaders whose order depends only on (seed, epoch), so every process and every
resumed run sees the same global batches; Accelerate splits each batch across processes."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation each epoch, from a generator seeded with seed + epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def train_loader(dataset: Dataset, batch_size: int, collate, seed: int) -> tuple[DataLoader, EpochShuffleSampler]:
    sampler = EpochShuffleSampler(len(dataset), seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate), sampler


def eval_loader(dataset: Dataset, batch_size: int, collate) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


class OnDevice:
    """A loader whose batches arrive on ``device``, for loaders Accelerate does not prepare."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield to_device(batch, self.device)


def to_device(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}
