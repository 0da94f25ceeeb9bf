"""Training-time image augmentation: random horizontal flip, random resized crop, colour jitter.

Written by hand on PIL because torchvision cannot be installed beside this torch build.

Each example's random draws come from a generator seeded with (run seed, epoch, index), not from
a shared global generator. The batches an epoch sees therefore depend only on the seed and the
epoch, like the order the sampler draws (engine/data_loading.py): the same under any number of
processes or loader workers, and the same after a resume from a mid-epoch checkpoint (where the
loader fetches a batch ahead, so global random state would be consumed before it is restored).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from tunelab.config import AugmentConfig
from tunelab.data.images import open_image

CROP_ASPECT_RATIOS = (3 / 4, 4 / 3)  # a random resized crop's width/height, drawn log-uniform in this range
CROP_ATTEMPTS = 10  # draws of (area, aspect) before falling back to the whole image


class AugmentedImages(Dataset):
    """Decoded training images, changed at random each epoch, then put through the model's transform."""

    def __init__(self, images: list[Image.Image], labels: list[int], transform, settings: AugmentConfig, seed: int):
        self.images, self.labels, self.transform = images, labels, transform
        self.settings, self.seed, self.epoch = settings, seed, 0

    @classmethod
    def load(cls, paths: list[Path], labels: list[int], transform, settings: AugmentConfig, seed: int, role: str):
        """Decode every file now, so one that cannot be read stops the run before training starts."""
        return cls([open_image(Path(path), f"data.{role}") for path in paths], labels, transform, settings, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = augment(self.images[index], self.settings, rng)
        return {"pixel_values": self.transform([image])[0], "labels": self.labels[index]}

    def without_augmentation(self) -> AugmentedImages:
        """The same images as the model sees them at evaluation, for scoring it on train; each is
        transformed when read, so no second copy of the split is held."""
        return AugmentedImages(self.images, self.labels, self.transform, AugmentConfig(), self.seed)


def without_augmentation(dataset: Dataset) -> Dataset:
    return dataset.without_augmentation() if isinstance(dataset, AugmentedImages) else dataset


def augment(image: Image.Image, settings: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """``image`` flipped, cropped and jittered as ``settings`` ask, with draws from ``rng``."""
    if settings.horizontal_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if settings.random_crop is not None:
        image = random_resized_crop(image, settings.random_crop, rng)
    if settings.color_jitter > 0:
        image = color_jitter(image, settings.color_jitter, rng)
    return image


def random_resized_crop(image: Image.Image, smallest_area: float, rng: np.random.Generator) -> Image.Image:
    """A box covering a fraction in [smallest_area, 1] of the image, of a random aspect ratio,
    resized back to the image's own size (the crop torchvision calls RandomResizedCrop)."""
    width, height = image.size
    low, high = math.log(CROP_ASPECT_RATIOS[0]), math.log(CROP_ASPECT_RATIOS[1])
    for _ in range(CROP_ATTEMPTS):
        area = width * height * rng.uniform(smallest_area, 1.0)
        aspect = math.exp(rng.uniform(low, high))
        box_width, box_height = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            left = int(rng.integers(0, width - box_width + 1))
            top = int(rng.integers(0, height - box_height + 1))
            box = (left, top, left + box_width, top + box_height)
            return image.resize((width, height), Image.BILINEAR, box=box)
    return image  # no drawn box fitted (a very long, thin image): keep it whole


def color_jitter(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor drawn in [1 - strength, 1 + strength]."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(1.0 - strength, 1.0 + strength))
    return image
