"""Tokenise text splits once, counting what truncation to ``max_length`` cut."""

from __future__ import annotations

from torch.utils.data import Dataset


class TokenizedDataset(Dataset):
    """Token ids per example (unpadded: padding happens per batch in the collator)."""

    def __init__(self, encodings: dict[str, list], labels: list[int]):
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


def tokenize(tokenizer, inputs: list, labels: list[int], max_length: int) -> tuple[TokenizedDataset, int]:
    """Return the dataset and how many examples were longer than ``max_length`` tokens."""
    if inputs and isinstance(inputs[0], tuple):
        first, second = [pair[0] for pair in inputs], [pair[1] for pair in inputs]
    else:
        first, second = list(inputs), None
    full_lengths = tokenizer(first, second, truncation=False, return_length=True, verbose=False)["length"]
    truncated = sum(1 for length in full_lengths if length > max_length)
    encodings = tokenizer(first, second, truncation=True, max_length=max_length)
    keep = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encodings]
    return TokenizedDataset({key: encodings[key] for key in keep}, labels), truncated
