"""Replay: rows of a retain set's train split mixed into every batch of the new task.

The rows are drawn with a generator seeded by (run seed, draw number, process), so the draws depend
only on how many were made: the count is checkpointed and a resumed run draws the same rows.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from tunelab.engine.data_loading import to_device


class Replay:
    def __init__(self, dataset: Dataset, collate, fraction: float, batch_size: int, seed: int, process: int = 0):
        self.dataset, self.collate = dataset, collate
        self.rows = max(1, math.ceil(fraction * batch_size))
        self.seed, self.process, self.draws = seed, process, 0

    def draw(self, device) -> dict:
        generator = torch.Generator().manual_seed((self.seed * 2**24 + self.draws) * 64 + self.process)
        self.draws += 1
        chosen = torch.randint(len(self.dataset), (self.rows,), generator=generator).tolist()
        batch = self.collate([self.dataset[index] for index in chosen])
        return to_device(batch, device)

    def state_dict(self) -> dict:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state["draws"]


def joined(first: dict, second: dict, pad_token_id: int = 0) -> dict:
    """Two batches as one: text is padded to the longer of the two (``pad_token_id`` for token ids,
    0 for masks and token types), images are stacked as they are."""
    if set(first) != set(second):
        raise ValueError(f"cannot join batches with keys {sorted(first)} and {sorted(second)}")
    together = {}
    for key, a in first.items():
        b = second[key]
        if a.dim() >= 2 and key != "pixel_values" and a.shape[1] != b.shape[1]:
            width = max(a.shape[1], b.shape[1])
            fill = pad_token_id if key == "input_ids" else 0
            a, b = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in (a, b))
        together[key] = torch.cat([a, b])
    return together
