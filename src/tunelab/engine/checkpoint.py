"""Checkpoints that a kill -9 cannot corrupt and a planted file cannot turn into code.

A checkpoint is a folder ``checkpoints/step-000120/`` holding

- ``model.safetensors``: every weight (safetensors runs no code when read);
- ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng-rank{N}.pt`` (each process's random
  generators and its not-yet-logged loss sum): torch files, read back only
  with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain values;
- ``state.json``: the loop's position (epoch, batches into it), best-metric and early-stopping
  state, the strategy's state, and what the run needs to finish its report;
- ``manifest.json``: size and sha256 of every other file, written last.

It is written as ``.step-000120.partial`` with every file fsynced, then renamed, so a folder
with the final name is complete. Loading checks every hash and weight shape and falls back to
the previous checkpoint when anything is off.

Written here rather than with Accelerate's ``save_state``/``load_state``: those write in place
(a kill mid-save leaves a half checkpoint under the final name) and read custom objects and
samplers with ``weights_only=False``, so a planted pickle would run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from tunelab.engine.callbacks import Callback, TrainState
from tunelab.errors import UserError, first_line
from tunelab.io import as_os_error, give_usual_permissions, write_atomic, write_json

WEIGHTS = "model.safetensors"
INFO = "info.json"
MANIFEST = "manifest.json"
STATE = "state.json"
CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")


# -- best weights (weights only, for load_best_at_end) ------------------------------------------


def save_weights(model: torch.nn.Module, folder: Path, info: dict) -> None:
    folder = Path(folder)
    temporary = folder / f".{WEIGHTS}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, str(temporary))
        _fsync(temporary)
        give_usual_permissions(temporary)
        os.replace(temporary, folder / WEIGHTS)
        write_json(folder / INFO, info)
    except (OSError, SafetensorError) as error:
        temporary.unlink(missing_ok=True)
        before = "the best weights saved before are intact; " if (folder / WEIGHTS).exists() else ""
        reason = _reason(as_os_error(error))
        raise UserError(f"output: cannot write {folder}: {reason}; {before}{what_is_intact(folder.parent)}") from None


def load_weights(model: torch.nn.Module, folder: Path) -> dict:
    load_model(model, str(Path(folder) / WEIGHTS))
    return json.loads((Path(folder) / INFO).read_text(encoding="utf-8"))


# -- full checkpoints ------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def saves_at_step(every, step: int) -> bool:
    """Whether ``train.checkpoint_every`` (``epoch``, N or None) asks for a checkpoint at ``step``."""
    return isinstance(every, int) and step % every == 0


class Checkpointer(Callback):
    """Save a resumable checkpoint each epoch or every N steps; keep the newest few and the best."""

    def __init__(
        self,
        root: Path,
        every,
        keep: int,
        accelerator,
        model,
        optimizer,
        scheduler,
        stateful: dict,
        metrics_file: Path,
        extra,
    ):
        self.root, self.every, self.keep = Path(root), every, keep
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.stateful, self.metrics_file, self.extra = stateful, Path(metrics_file), extra

    def on_step_end(self, state: TrainState) -> None:
        # Amid a run of non-finite steps the last checkpoint before them stays the newest.
        if saves_at_step(self.every, state.step) and not state.consecutive_skips:
            self.save(state, epoch=state.epoch, batches=state.batches_into_epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.every is not None and not state.diverged and not state.consecutive_skips:
            self.save(state, epoch=state.epoch + 1, batches=0)

    def save(self, state: TrainState, epoch: int, batches: int) -> None:
        accelerator = self.accelerator
        final = self.root / checkpoint_name(state.step)
        partial = self.root / f".{final.name}.partial"
        payload = {
            "format_version": 1,
            "train_state": state.state_dict() | {"epoch": epoch, "batches_into_epoch": batches},
            "callbacks": {name: obj.state_dict() for name, obj in self.stateful.items()},
            "metrics_lines": _line_count(self.metrics_file),
            "extra": self.extra(),
        }
        # Every process passes every barrier even after a failed write, so none is left waiting;
        # the failure is then shared and all of them stop with the same message.
        problems: list[OSError] = []

        def attempt(action) -> None:
            if not problems:
                try:
                    action()
                except (OSError, SafetensorError) as error:
                    problems.append(as_os_error(error))

        main = accelerator.is_main_process
        if main:
            attempt(lambda: (shutil.rmtree(partial, ignore_errors=True), partial.mkdir(parents=True)))
        accelerator.wait_for_everyone()
        # Per process: its generators, and its share of the loss not logged yet (reduced at log time).
        own = _rng_state() | {"running": (float(state.running_loss), int(state.running_count))}
        attempt(lambda: _save_torch(own, partial / f"rng-rank{accelerator.process_index}.pt"))
        if main:
            attempt(lambda: self._write_main_files(partial, payload))
        accelerator.wait_for_everyone()
        if main:
            attempt(lambda: self._complete(partial, final, state))
        failure = _shared_failure(problems, accelerator)
        if failure:
            if main:
                shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"output: cannot write checkpoint {final}: {failure}; {what_is_intact(self.root)}")
        accelerator.wait_for_everyone()

    def _write_main_files(self, partial: Path, payload: dict) -> None:
        accelerator = self.accelerator
        _test_pause()
        save_model(accelerator.unwrap_model(self.model), str(partial / WEIGHTS))
        _fsync(partial / WEIGHTS)
        _test_pause()
        _save_torch(self.optimizer.state_dict(), partial / "optimizer.pt")
        _test_pause()
        _save_torch(self.scheduler.state_dict(), partial / "scheduler.pt")
        if accelerator.scaler is not None:
            _save_torch(accelerator.scaler.state_dict(), partial / "scaler.pt")
        _test_pause()
        write_json(partial / STATE, payload)
        _test_pause()

    def _complete(self, partial: Path, final: Path, state: TrainState) -> None:
        give_usual_permissions(partial)
        write_json(partial / MANIFEST, {"step": state.step, "files": _hashes(partial)})
        _test_pause()
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        _fsync_dir(self.root)
        self._prune(state)

    def _prune(self, state: TrainState) -> None:
        complete = complete_checkpoints(self.root)
        protected = {checkpoint_name(state.best_step)} if state.best_step is not None else set()
        for folder in complete[self.keep :]:
            if folder.name not in protected:
                shutil.rmtree(folder, ignore_errors=True)


def what_is_intact(root: Path) -> str:
    """After a failed write: the checkpoint a resume would start from, and how to resume."""
    newest = complete_checkpoints(root)
    if not newest:
        return "no checkpoint was complete before it"
    return f"{newest[0].name} is intact: free space, then tunelab train --resume {Path(root).parent}"


def _reason(error: OSError) -> str:
    return "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))


def _shared_failure(problems: list[OSError], accelerator) -> str:
    """The first write failure of any process ("" if none), known to every process."""
    local = _reason(problems[0]) if problems else ""
    if accelerator.num_processes == 1:
        return local
    from accelerate.utils import gather_object

    return next((message for message in gather_object([local]) if message), "")


def _test_pause() -> None:
    """Test seam: ``TUNELAB_TEST_SLOW_CHECKPOINT=SECONDS`` sleeps between the files of a checkpoint
    being written, so tests/test_reliability.py can kill -9 a run mid-write on purpose. Unset in
    real runs."""
    seconds = os.environ.get("TUNELAB_TEST_SLOW_CHECKPOINT")
    if seconds:
        time.sleep(float(seconds))


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders with their final name, newest first."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)), reverse=True)


def load_latest(root: Path, accelerator, model, optimizer, scheduler, warn) -> dict | None:
    """Restore the newest checkpoint that verifies (``warn`` hears of each one refused); None if none does."""
    for folder in complete_checkpoints(root):
        try:
            return _load(folder, accelerator, model, optimizer, scheduler)
        except CorruptCheckpoint as problem:
            warn(f"checkpoint {folder.name} refused: {problem}")
    return None


class CorruptCheckpoint(Exception):
    """A checkpoint that fails its hashes, shapes or safe loading."""


def _load(folder: Path, accelerator, model, optimizer, scheduler) -> dict:
    verify(folder)
    unwrapped = accelerator.unwrap_model(model)
    _check_shapes(folder / WEIGHTS, unwrapped)
    payload = json.loads((folder / STATE).read_text(encoding="utf-8"))
    optimizer_state = _load_torch(folder / "optimizer.pt")
    scheduler_state = _load_torch(folder / "scheduler.pt")
    rng_file = folder / f"rng-rank{accelerator.process_index}.pt"
    rng = _load_torch(rng_file) if rng_file.exists() else None
    scaler_file = folder / "scaler.pt"
    try:
        load_model(unwrapped, str(folder / WEIGHTS))
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        if accelerator.scaler is not None and scaler_file.exists():
            accelerator.scaler.load_state_dict(_load_torch(scaler_file))
    except (RuntimeError, ValueError, KeyError) as error:
        raise CorruptCheckpoint(f"its contents do not fit this run ({first_line(error)})") from None
    payload["rng"] = rng
    payload["folder"] = str(folder)
    return payload


def verify(folder: Path) -> None:
    """Every file listed in the manifest is there with its size and sha256, and nothing is missing."""
    manifest_file = folder / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CorruptCheckpoint("its manifest is missing or damaged") from None
    for required in (WEIGHTS, STATE, "optimizer.pt", "scheduler.pt"):
        if required not in files:
            raise CorruptCheckpoint(f"its manifest does not list {required}")
    actual = _hashes(folder)
    for name, expected in files.items():
        if actual.get(name) != expected:
            raise CorruptCheckpoint(f"{name} does not match its recorded hash (truncated or modified)")


def restore_rng(saved: dict | None) -> None:
    if not saved:
        return
    random.setstate(_tuples(saved["python"]))
    kind, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(saved["torch"])
    if torch.cuda.is_available() and saved.get("cuda"):
        torch.cuda.set_rng_state_all(saved["cuda"])


def truncate_lines(path: Path, keep: int) -> None:
    """Drop what a killed run logged after its checkpoint, so the resumed log equals an uninterrupted one."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    write_atomic(path, "".join(lines[:keep]))


def _rng_state() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _save_torch(obj, path: Path) -> None:
    # Through a Python file that keeps its write errors: torch's own writer reports a full disk as
    # "enforce fail at inline_container.cc ... unexpected pos", without the errno.
    with open(path, "wb") as file:
        writer = _KeepsWriteErrors(file)
        try:
            torch.save(obj, writer)
            file.flush()
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None
        os.fsync(file.fileno())


class _KeepsWriteErrors:
    """A file's ``write`` that remembers the OSError it raised, for torch.save to be given."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def _load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises weights_only=False: never here
        raise CorruptCheckpoint(f"{path.name} holds pickled objects, which tunelab never loads") from None
    except Exception as error:  # a truncated or damaged zip archive
        raise CorruptCheckpoint(f"{path.name} is not a readable tensor file ({first_line(error)})") from None


def _check_shapes(weights_file: Path, model: torch.nn.Module) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    try:
        with safe_open(str(weights_file), framework="pt") as saved:
            shapes = {name: tuple(saved.get_slice(name).get_shape()) for name in saved.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise CorruptCheckpoint(f"{weights_file.name} is unreadable ({first_line(error)})") from None
    wrong = [n for n, shape in shapes.items() if n in expected and expected[n] != shape]
    if wrong:
        raise CorruptCheckpoint(f"{weights_file.name} has wrong shapes, e.g. {wrong[0]}")


def _hashes(folder: Path) -> dict:
    return {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
