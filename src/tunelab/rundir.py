"""The run directory: created once, never clobbered without ``--overwrite``."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tunelab.errors import UserError
from tunelab.io import write_atomic
from tunelab.lock import holding

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
MODEL = "model"
REPORT = "report.html"
BEST = "checkpoints/best"
CHECKPOINTS = "checkpoints"


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Create a fresh run directory. An earlier run there is set aside (``--overwrite``), not
    deleted: :func:`finish_run_dir` deletes it once the new run succeeds, or puts it back."""
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output: {run_dir} exists and is a file, not a run directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"output: {run_dir} already exists; pass --overwrite or choose another --output")
        if not (run_dir / CONFIG).exists():
            raise UserError(f"output: {run_dir} is not a tunelab run directory; refusing to overwrite it")
        _check_writable(run_dir.parent)
        shutil.rmtree(_set_aside_name(run_dir), ignore_errors=True)
        run_dir.rename(_set_aside_name(run_dir))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output: cannot create {run_dir}: {error.strerror or error}") from None
    _check_writable(run_dir)
    return run_dir


@contextlib.contextmanager
def claimed(
    path: str | Path,
    overwrite: bool = False,
    config_text: str | None = None,
    *,
    continuing: bool = False,
    main_process: bool = True,
) -> Iterator[Path]:
    """A command's output folder for the block: locked, created (an earlier run set aside under
    ``overwrite``), ``config_text`` written to its config.yaml; if the block fails, the earlier run
    is put back (an interruption says so) or the unstarted folder removed. ``continuing``: a
    study's folder, new or holding a study of this same config, which is continued and never set
    aside or removed. Under torchrun only the main process claims and finishes: the others would
    race it, deleting each other's files."""
    with holding(path, main_process):
        if not main_process:
            yield Path(path)
            return
        if continuing:
            run_dir = _continued(Path(path), config_text)
            write_atomic(run_dir / CONFIG, config_text)
            yield run_dir
            return
        run_dir = prepare_run_dir(path, overwrite)
        succeeded = False
        try:
            if config_text is not None:
                write_atomic(run_dir / CONFIG, config_text)
            yield run_dir
            succeeded = True
        except KeyboardInterrupt as interrupt:
            if replaces_a_run(run_dir):  # put back below: a checkpoint of the new run goes with it
                stopped = str(interrupt).split(";")[0] or "interrupted"
                raise type(interrupt)(f"{stopped}; {run_dir} holds the run it was replacing again") from None
            raise
        finally:
            finish_run_dir(run_dir, succeeded)


def _continued(output: Path, config_text: str) -> Path:
    """A new folder, or one holding a study of this same config."""
    if output.exists() and not output.is_dir():
        raise UserError(f"output: {output} exists and is a file")
    if output.is_dir() and any(output.iterdir()):
        saved = output / CONFIG
        if not saved.is_file():
            raise UserError(f"output: {output} exists and is not a tunelab study; choose another --output")
        if saved.read_text(encoding="utf-8") != config_text:
            raise UserError(f"output: {output} holds a study of another config; choose another --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output: cannot create {output}: {error.strerror or error}") from None
    return output


def finish_run_dir(run_dir: Path, succeeded: bool) -> None:
    """After a run: drop the set-aside earlier run, or, if the new run failed, restore it."""
    previous = _set_aside_name(run_dir)
    if succeeded:
        shutil.rmtree(previous, ignore_errors=True)
        return
    if previous.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        previous.rename(run_dir)
    else:
        discard_unstarted_run(run_dir)


def replaces_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` was made with ``--overwrite`` over an earlier run, set aside until it finishes."""
    return _set_aside_name(run_dir).exists()


def _set_aside_name(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.previous")


def discard_unstarted_run(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but its config: the run failed before it began."""
    if run_dir.is_dir() and {path.name for path in run_dir.iterdir()} <= {CONFIG}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _check_writable(folder: Path) -> None:
    probe = folder / ".tunelab-write-test"
    try:
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise UserError(f"output: cannot write to {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output: cannot write to {folder}")


def existing_run(path: str | Path) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / MODEL / "tunelab.json").exists():
        raise UserError(f"{run_dir} holds no finished model (no {MODEL}/tunelab.json)")
    return run_dir
