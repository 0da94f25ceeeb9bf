"""A training run in a run directory of its own (``rundir.claimed``): ``tunelab train`` and
``tunelab.fine_tune`` both start runs this way."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.builder.runtime import process_state
from tunelab.builder.training import run_training
from tunelab.config import RunConfig
from tunelab.rundir import claimed


def train_into(
    config: RunConfig,
    output: str | Path,
    overwrite: bool = False,
    console: Console | None = None,
    progress: bool = True,
    interruptible: bool = False,
) -> tuple[Path, dict]:
    """Train ``config`` into ``output``; returns the run directory and the run's results. A failed
    run never costs the user the run it was replacing."""
    with claimed(output, overwrite, main_process=process_state().is_main_process) as run_dir:
        results = run_training(config, run_dir, console, progress=progress, interruptible=interruptible)
    return run_dir, results
