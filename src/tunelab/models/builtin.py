"""``digits-cnn``: the demo CNN pretrained on digits 0-4, built with tunelab itself and cached.

It learns which digit each image shows and how the image was rotated or mirrored (the
``dihedral`` pretext): on 8x8 digits a CNN trained on the five digits alone learns features no
better than random ones for the other five, while the pretext makes them transfer.

The cache lives in ``$TUNELAB_CACHE`` (default ``~/.cache/tunelab``); the first use trains it
(a few seconds on CPU) and later uses load it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunelab.io import cache_dir

PRETRAIN_CONFIG = {
    "task": "image-classification",
    "seed": 0,
    "model": {"source": "cnn"},
    "data": {
        "train": "digits",
        "digits_classes": [0, 1, 2, 3, 4],
        "digits_pretext": "dihedral",
        "digits_validation_per_class": 5,
    },
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_ratio": 0.05},
    "train": {"epochs": 15, "batch_size": 32, "log_every": 20, "checkpoint_every": None},
    "evaluate": {"base": False},
}


def digits_cnn_folder() -> Path:
    target = cache_dir() / "digits-cnn-0-4-dihedral"
    if (target / "model" / "tunelab.json").exists():
        return target / "model"
    from accelerate.utils import broadcast_object_list

    from tunelab.builder import run_training
    from tunelab.builder.runtime import process_state
    from tunelab.config import validate

    # Under torchrun every process takes part in this run, and only the main one writes its files,
    # so all of them must use the main process's staging folder (one per launch, never shared).
    state = process_state()
    owner = broadcast_object_list([os.getpid()])[0]
    staging = target.with_name(f".{target.name}.{owner}.partial")
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    state.wait_for_everyone()
    run_training(validate(PRETRAIN_CONFIG), staging, progress=False)
    if state.is_main_process:
        try:
            staging.rename(target)
        except OSError:  # another launch finished first; keep theirs
            shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    return target / "model"


def build_cached(source: str) -> None:
    """Build a cached built-in now (a training run of its own), so loading it later only reads it."""
    if source == "digits-cnn":
        digits_cnn_folder()
