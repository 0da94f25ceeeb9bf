"""Batch assembly: dynamic padding for text (per batch, to the longest example), stacking for images."""

from __future__ import annotations

from torch.utils.data import default_collate


def make_collate(loaded, task: str):
    if task == "text-classification":
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(loaded.tokenizer)
    return default_collate
