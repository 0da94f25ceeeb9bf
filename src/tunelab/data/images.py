"""Decode, resize and normalise images into tensors.

Hugging Face vision models bring their own image processor and we use it. Built-in and custom
modules get the minimal equivalent (resize, scale to [0, 1], normalise with mean/std 0.5),
written here because torchvision cannot be installed beside this torch build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tunelab.errors import UserError


class TensorImageDataset(Dataset):
    def __init__(self, pixel_values: torch.Tensor, labels: list[int]):
        self.pixel_values = pixel_values
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def open_image(path: Path, where: str) -> Image.Image:
    """Decode one image as RGB; ``where`` names what the user gave (``data.train``, ``--input``)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError:  # raised from the header, before any pixel is decoded
        raise UserError(
            f"{where}: {path} declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb, "
            "or a scan far larger than any model input); refused without decoding it: remove or shrink it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{where}: cannot decode image {path}: {type(error).__name__}") from None


class SimpleImageTransform:
    """Resize to a square, scale to [0, 1], normalise each channel with mean and std.

    ``channels`` 1 reads images as greyscale (the built-in digits), 3 as RGB.
    """

    def __init__(self, size: int, mean: float = 0.5, std: float = 0.5, channels: int = 3):
        self.size, self.mean, self.std, self.channels = size, mean, std, channels

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        mode = "L" if self.channels == 1 else "RGB"
        arrays = [
            np.asarray(image.convert(mode).resize((self.size, self.size), Image.BILINEAR), dtype=np.float32) / 255.0
            for image in images
        ]
        batch = torch.from_numpy(np.stack(arrays))
        batch = batch.unsqueeze(1) if self.channels == 1 else batch.permute(0, 3, 1, 2)
        return (batch - self.mean) / self.std

    def settings(self) -> dict:
        return {"image_size": self.size, "mean": self.mean, "std": self.std, "channels": self.channels}


def processor_transform(processor):
    """Wrap a Hugging Face image processor to the same call shape as SimpleImageTransform."""

    def transform(images: list[Image.Image]) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"]

    return transform


def load_images(paths: list[Path], labels: list[int], transform, role: str) -> TensorImageDataset:
    pixel_values = transform([open_image(Path(path), f"data.{role}") for path in paths])
    return TensorImageDataset(pixel_values, labels)
