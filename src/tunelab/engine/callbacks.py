"""Events the loop fires, and the callbacks that react to them.

Cross-cutting behaviour (early stopping, keeping the best weights, logging, progress) lives
here, outside the loop. A callback reads the :class:`TrainState` and may set
``state.should_stop``; it never reaches into the loop's locals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.io import append_jsonl


@dataclass
class TrainState:
    """Where the loop is; everything here goes into a checkpoint so a resumed run continues exactly."""

    total_steps: int
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0  # micro-batches of the current epoch already trained on
    should_stop: bool = False
    stop_reason: str = ""
    diverged: bool = False
    best_value: float | None = None
    best_step: int | None = None
    skipped_steps: int = 0  # optimizer steps dropped for non-finite gradients
    consecutive_skips: int = 0
    running_loss: object = 0.0  # loss sum (a tensor while training) and micro-batch count since the last log line
    running_count: int = 0

    CHECKPOINTED = (
        "step",
        "epoch",
        "batches_into_epoch",
        "should_stop",
        "stop_reason",
        "diverged",
        "best_value",
        "best_step",
        "skipped_steps",
        "consecutive_skips",
        "running_loss",
        "running_count",
    )

    def state_dict(self) -> dict:
        saved = {name: getattr(self, name) for name in self.CHECKPOINTED}
        saved["running_loss"], saved["running_count"] = float(self.running_loss), int(self.running_count)
        return saved

    def load_state_dict(self, saved: dict) -> None:
        for name in self.CHECKPOINTED:
            setattr(self, name, saved[name])

    def stop_diverged(self, in_a_row: int) -> None:
        self.should_stop = self.diverged = True
        self.stop_reason = (
            f"stopped: {in_a_row} optimizer steps in a row had non-finite gradients "
            f"(loss or gradients became inf/NaN); the last good checkpoint is kept"
        )


class Callback:
    def on_train_start(self, state: TrainState, model, optimizer) -> None: ...
    def on_epoch_start(self, state: TrainState, model, optimizer) -> None: ...
    def on_log(self, state: TrainState, record: dict) -> None: ...
    def on_evaluate(self, state: TrainState, metrics: dict) -> None: ...
    def on_before_optimizer_step(self, state: TrainState, model) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState, model) -> None: ...


def improved(value: float, best: float | None, lower_is_better: bool, min_delta: float = 0.0) -> bool:
    if best is None:
        return not math.isnan(value)
    return value < best - min_delta if lower_is_better else value > best + min_delta


class BestWeights(Callback):
    """Save the weights whenever the monitored validation metric improves; restore them at the end."""

    def __init__(self, metric: str, folder: Path, accelerator, restore_at_end: bool, lower_is_better: bool = False):
        self.metric, self.folder, self.accelerator = metric, Path(folder), accelerator
        self.lower_is_better = lower_is_better
        self.restore_at_end = restore_at_end
        self.model = None

    def on_train_start(self, state, model, optimizer) -> None:
        self.model = model

    def on_evaluate(self, state, metrics) -> None:
        value = metrics.get(self.metric)
        if value is None or not improved(value, state.best_value, self.lower_is_better):
            return
        state.best_value, state.best_step = value, state.step
        from tunelab.engine.checkpoint import save_weights

        if self.accelerator.is_main_process:
            save_weights(
                self.accelerator.unwrap_model(self.model), self.folder, {"step": state.step, self.metric: value}
            )
        self.accelerator.wait_for_everyone()

    def on_train_end(self, state, model) -> None:
        if self.restore_at_end and state.best_step is not None and state.best_step != state.step:
            from tunelab.engine.checkpoint import load_weights

            load_weights(self.accelerator.unwrap_model(model), self.folder)


class EarlyStopping(Callback):
    def __init__(self, metric: str, patience: int, min_delta: float = 0.0, lower_is_better: bool = False):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.lower_is_better = lower_is_better
        self.best: float | None = None
        self.bad_evaluations = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, saved: dict) -> None:
        self.best, self.bad_evaluations = saved["best"], saved["bad_evaluations"]

    def on_evaluate(self, state, metrics) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        if improved(value, self.best, self.lower_is_better, self.min_delta):
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            state.should_stop = True
            state.stop_reason = f"early stopping: no {self.metric} gain in {self.patience} evaluations"


class MetricsFile(Callback):
    """One JSON line per logged step and per evaluation, written by the main process only."""

    def __init__(self, path: Path, is_main_process: bool):
        self.path, self.enabled = Path(path), is_main_process

    def on_log(self, state, record) -> None:
        if self.enabled:
            append_jsonl(self.path, {"type": "train", **record})

    def on_evaluate(self, state, metrics) -> None:
        if self.enabled:
            scalars = {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}  # not the plot points
            append_jsonl(
                self.path, {"type": "eval", "split": "validation", "step": state.step, "epoch": state.epoch, **scalars}
            )


class ProgressBar(Callback):
    """A rich progress bar over optimizer steps, with the latest loss and validation metric."""

    def __init__(self, console, enabled: bool, metric: str):
        self.console, self.enabled, self.metric = console, enabled, metric
        self.progress = self.task = None
        self.last = ""

    def on_train_start(self, state, model, optimizer) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.total_steps, info="")

    def on_log(self, state, record) -> None:
        if self.progress:
            self.last = f"loss {record['loss']:.4f}"
            self.progress.update(self.task, completed=state.step, info=self.last)

    def on_evaluate(self, state, metrics) -> None:
        if self.progress and self.metric in metrics:
            self.progress.update(self.task, info=f"{self.last}  val {self.metric} {metrics[self.metric]:.4f}")

    def on_epoch_end(self, state) -> None:
        if self.progress:
            self.progress.update(self.task, completed=state.step)

    def on_train_end(self, state, model) -> None:
        if self.progress:
            self.progress.stop()
