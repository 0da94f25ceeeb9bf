"""A training run in a run directory of its own: claimed under a lock, an earlier run there set
aside (``overwrite``) and put back if the new one fails. ``tunelab train`` and
``tunelab.fine_tune`` both start runs this way."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.builder.runtime import process_state
from tunelab.builder.training import run_training
from tunelab.config import RunConfig
from tunelab.engine.interrupt import Interrupted
from tunelab.lock import holding
from tunelab.rundir import finish_run_dir, prepare_run_dir, replaces_a_run


def train_into(
    config: RunConfig,
    output: str | Path,
    overwrite: bool = False,
    console: Console | None = None,
    progress: bool = True,
    interruptible: bool = False,
) -> tuple[Path, dict]:
    """Train ``config`` into ``output``; returns the run directory and the run's results."""
    # Under torchrun every process runs this; only one may check, set aside (overwrite) and
    # create the directory, or they race and delete each other's files.
    main_process = process_state().is_main_process
    with holding(output, main_process):
        run_dir = prepare_run_dir(output, overwrite) if main_process else Path(output)
        succeeded = False
        try:
            results = run_training(config, run_dir, console, progress=progress, interruptible=interruptible)
            succeeded = True
        except Interrupted as interrupt:
            if main_process and replaces_a_run(run_dir):  # put back below: its checkpoint goes with it
                stopped = str(interrupt).split(";")[0]
                raise Interrupted(f"{stopped}; {run_dir} holds the run it was replacing again") from None
            raise
        finally:
            if main_process:  # a failed run never costs the user the run it was replacing
                finish_run_dir(run_dir, succeeded)
    return run_dir, results
