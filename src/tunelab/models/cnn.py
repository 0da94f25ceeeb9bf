"""The built-in demo CNN: three convolution blocks and a linear head, small enough for CPU."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class DemoCNN(nn.Module):
    """``blocks`` (a ModuleList, so partial fine-tuning can count them) then ``head``."""

    def __init__(self, num_labels: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                conv_block(in_channels, width, pool=True),
                conv_block(width, width * 2, pool=True),
                conv_block(width * 2, width * 2, pool=False),
            ]
        )
        # A 2x2 grid keeps where strokes are, which a global average would discard.
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(width * 2 * 4, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = pixel_values
        for block in self.blocks:
            features = block(features)
        return self.head(self.dropout(self.pool(features).flatten(1)))
