"""The model's head replaced by a set of heads, one active at a time.

Task-incremental learning gives each task its own head on the shared body; class-incremental
learning keeps one head over every class. ``HeadSwitch`` takes the place of the model's head
module, so the model's own forward runs unchanged; it remembers its latest input (the features),
which lets replayed rows of other tasks be scored through their own heads in the same pass.
"""

from __future__ import annotations

import torch
from torch import nn


class HeadSwitch(nn.Module):
    def __init__(self, heads: dict[str, nn.Module]):
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        self.active = next(iter(self.heads))
        self.features: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.features = features
        return self.heads[self.active](features)


def install(model: nn.Module, head_name: str, heads: dict[str, nn.Module]) -> HeadSwitch:
    """Put a HeadSwitch over ``heads`` where the model's head module ``head_name`` was."""
    parent_name, _, child = head_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    switch = HeadSwitch(heads)
    setattr(parent, child, switch)
    return switch
