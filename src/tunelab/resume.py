"""What ``tunelab train --resume`` checks before it continues a run, and ``--restart``.

A checkpoint records the config it was trained with. Resuming with an edited ``config.yaml``
would mix two runs under one name (weights and optimizer state from one config, the rest of the
schedule from another), so it is refused, naming what changed; ``--restart`` starts the run again
from step 0 with the config as it now is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.engine.checkpoint import STATE, complete_checkpoints
from tunelab.errors import UserError
from tunelab.rundir import CHECKPOINTS, METRICS

SHOWN = 3  # differences named in the refusal; the rest are counted


def trained_config(run_dir: Path) -> dict | None:
    """The config the newest readable checkpoint was written with (None: no checkpoint records one)."""
    for folder in complete_checkpoints(Path(run_dir) / CHECKPOINTS):
        try:
            saved = json.loads((folder / STATE).read_text(encoding="utf-8"))["extra"]["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(saved, dict):
            return saved
    return None


def check_config_unchanged(run_dir: Path, config: RunConfig) -> None:
    saved = trained_config(run_dir)
    if saved is None:
        return
    changed = differences(saved, config.model_dump(mode="json"))
    if changed:
        shown = "; ".join(changed[:SHOWN]) + (f"; and {len(changed) - SHOWN} more" if len(changed) > SHOWN else "")
        raise UserError(
            f"--resume: {Path(run_dir) / 'config.yaml'} was edited after its checkpoints were written ({shown}); "
            f"put it back to resume, or start again with the edits: tunelab train --resume {run_dir} --restart"
        )


def differences(before: dict, after: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    found = []
    for key in list(before) + [key for key in after if key not in before]:
        old, new = before.get(key, "(unset)"), after.get(key, "(unset)")
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return found


def forget_progress(run_dir: Path) -> None:
    """``--restart``: drop the run's checkpoints, best weights and log, so it starts again at step 0."""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)  # the best weights live there too
    (Path(run_dir) / METRICS).unlink(missing_ok=True)
