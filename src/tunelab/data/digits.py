"""scikit-learn's bundled 8x8 digits as a built-in image dataset, split per class with a seed."""

from __future__ import annotations

import numpy as np
import torch

from tunelab.data.images import TensorImageDataset

TEST_FRACTION = 0.4


def digits_splits(
    classes: list[int], train_per_class: int | None, validation_per_class: int, seed: int, pretext: str = "none"
) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Return {split: (images [N,1,8,8] in [0,1], label names)} for the chosen digits.

    Per class, a fixed 40% is the test set, then ``validation_per_class`` images validate and
    up to ``train_per_class`` of the rest train (all of the rest when None). With the
    ``dihedral`` pretext every image also appears rotated and flipped, labelled
    ``digit/transform``: telling the eight apart teaches shape features that a plain
    five-digit task does not, so what the CNN learns transfers better to unseen digits.
    """
    from sklearn.datasets import load_digits  # here: importing it costs a second

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for digit in classes:
        indices = rng.permutation(np.flatnonzero(digits.target == digit))
        test_count = int(len(indices) * TEST_FRACTION)
        chosen["test"] += indices[:test_count].tolist()
        chosen["validation"] += indices[test_count : test_count + validation_per_class].tolist()
        rest = indices[test_count + validation_per_class :]
        chosen["train"] += rest[: train_per_class or len(rest)].tolist()
    splits = {
        split: (images[index_list], [str(digits.target[i]) for i in index_list]) for split, index_list in chosen.items()
    }
    if pretext == "dihedral":
        splits = {split: _dihedral(images, names) for split, (images, names) in splits.items()}
    return splits


def _dihedral(images: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The eight rotations and mirror images of every image, each its own class."""
    variants, labels = [], []
    for transform in range(8):
        turned = torch.rot90(images, transform % 4, dims=(2, 3))
        variants.append(torch.flip(turned, dims=(3,)) if transform >= 4 else turned)
        labels += [f"{name}/{transform}" for name in names]
    return torch.cat(variants), labels


def as_dataset(images: torch.Tensor, labels: list[int]) -> TensorImageDataset:
    # Normalise to mean/std 0.5 like the other image paths.
    return TensorImageDataset((images - 0.5) / 0.5, labels)
