"""Data loaders whose order depends only on (seed, epoch), so every process and every
resumed run sees the same global batches; Accelerate splits each batch across processes.

Text batches are padded to their longest row, so rows of like length are batched together
where the order does not matter for learning: training draws batches of like length
(``train.group_by_length``, as Hugging Face's ``group_by_length``), and evaluation reads rows
longest first and puts its results back in the dataset's order.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

# As Hugging Face's LengthGroupedSampler: a random draw of this many batches (fewer for small data,
# so an epoch has at least MIN_MEGABATCHES draws) is sorted by length, so batches stay random in
# which rows they hold while their rows are of like length.
MEGABATCH_BATCHES = 50
MIN_MEGABATCHES = 4


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation each epoch, from a generator seeded with seed + epoch.

    With ``lengths``, batches of like length (``batch_size``: the rows of one optimizer step).
    Each megabatch (a run of the permutation, see ``megabatch_rows``) is sorted longest first and
    cut into batches, and the full batches are then drawn in a random order, the one holding the
    longest row first (memory runs out at once, if it will) and a last partial batch last. Hugging
    Face's sampler stops after the sort, so within each megabatch training sweeps from its longest
    sentences to its shortest, every epoch (the whole epoch, when it is one megabatch).
    """

    def __init__(self, size: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1):
        self.size, self.seed, self.epoch = size, seed, 0
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            return iter(order)
        span = megabatch_rows(self.size, self.batch_size)
        starts = list(range(0, self.size, span))
        if len(starts) > 1 and self.size - starts[-1] < span // 2:
            starts.pop()  # a short last megabatch joins the one before: its batches would mix lengths
        grouped = []
        for start, end in zip(starts, starts[1:] + [self.size], strict=True):
            grouped += sorted(order[start:end], key=lambda row: -self.lengths[row])
        batch = self.batch_size
        batches = [grouped[start : start + batch] for start in range(0, len(grouped), batch)]
        partial = [batches.pop()] if batches and len(batches[-1]) < batch else []
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        if batches:  # a batch's first row is its longest
            longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i][0]])
            batches.insert(0, batches.pop(longest))
        return iter([row for batch in batches + partial for row in batch])

    def __len__(self) -> int:
        return self.size


def megabatch_rows(size: int, batch_size: int) -> int:
    """Rows sorted together: ``MEGABATCH_BATCHES`` batches, or fewer so that an epoch has at least
    ``MIN_MEGABATCHES`` of them (at least one batch), as Hugging Face's sampler."""
    return batch_size * max(1, min(MEGABATCH_BATCHES, size // (batch_size * MIN_MEGABATCHES)))


def train_loader(
    dataset: Dataset,
    batch_size: int,
    collate,
    seed: int,
    group_by_length: bool = False,
    accumulation_steps: int = 1,
    **loading,
) -> tuple[DataLoader, EpochShuffleSampler]:
    """Shuffled batches; grouped by length, the rows of one optimizer step (``accumulation_steps``
    batches) are grouped as one, so accumulating two batches of 8 trains on the rows one of 16 would."""
    lengths = token_lengths(dataset) if group_by_length else None
    sampler = EpochShuffleSampler(len(dataset), seed, lengths, batch_size * accumulation_steps)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, **loading), sampler


def eval_loader(dataset: Dataset, batch_size: int, collate, longest_first: bool = True, **loading) -> DataLoader:
    """Batches in order; for text, longest rows first (``collect_logits`` restores the order).
    ``longest_first=False`` keeps the dataset's own order for callers that read rows from it."""
    lengths = token_lengths(dataset) if longest_first else None
    if lengths is not None:
        dataset = LengthSorted(dataset, lengths)
    # Its own generator: starting to read a loader draws a seed, and drawing it from torch's global
    # one would make training depend on how often, and whether, anything was evaluated.
    generator = torch.Generator()
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, generator=generator, **loading)


class LengthSorted(Dataset):
    """A dataset read longest row first; ``in_dataset_order`` puts per-row results back."""

    def __init__(self, dataset: Dataset, lengths: list[int]):
        self.dataset = dataset
        self.order = sorted(range(len(lengths)), key=lambda row: -lengths[row])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.dataset[self.order[index]]

    def in_dataset_order(self, rows: torch.Tensor) -> torch.Tensor:
        restored = torch.empty_like(rows)
        restored[torch.tensor(self.order)] = rows
        return restored


def in_dataset_order(loader, rows: torch.Tensor) -> torch.Tensor:
    """Per-row results of reading ``loader`` through, in its dataset's own order."""
    dataset = getattr(getattr(loader, "loader", loader), "dataset", None)
    return dataset.in_dataset_order(rows) if isinstance(dataset, LengthSorted) else rows


def token_lengths(dataset: Dataset) -> list[int] | None:
    """Each row's token count for tokenised text (also through subsets), else None."""
    if isinstance(dataset, Subset):
        inner = token_lengths(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    encodings = getattr(dataset, "encodings", None)
    if not isinstance(encodings, dict) or "input_ids" not in encodings:
        return None
    return [len(ids) for ids in encodings["input_ids"]]


def loading_options(workers: int | str, cuda: bool) -> dict:
    """DataLoader workers and pinned memory where they help: with a GPU, workers prepare the next
    batches while it computes and pinned memory speeds the copy; on a CPU the main process would
    only share its cores with them, so ``auto`` keeps the work in it."""
    count = (min(4, (os.cpu_count() or 2) // 2) if cuda else 0) if workers == "auto" else int(workers)
    options: dict = {"num_workers": count, "pin_memory": cuda}
    if count:
        options["persistent_workers"] = True
    return options


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
