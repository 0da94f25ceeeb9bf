"""Weights on disk as safetensors, written atomically with a small JSON of what they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from tunelab.io import write_json

WEIGHTS = "model.safetensors"
INFO = "info.json"


def save_weights(model: nn.Module, folder: Path, info: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{WEIGHTS}.tmp"
    save_model(model, str(temporary))
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, folder / WEIGHTS)
    write_json(folder / INFO, info)


def load_weights(model: nn.Module, folder: Path) -> dict:
    load_model(model, str(Path(folder) / WEIGHTS))
    return json.loads((Path(folder) / INFO).read_text(encoding="utf-8"))
