"""The training loop: Accelerate for devices, processes, mixed precision and accumulation.

Everything else (what trains, early stopping, logging, saving) is a callback; the loop only
steps, and asks ``evaluate`` for validation metrics at the configured interval. The guard on
non-finite steps (``guard``) and the position in the data (``position``) are objects it calls.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunelab.config import TrainConfig
from tunelab.engine.callbacks import Callback, TrainState
from tunelab.engine.checkpoint import saves_at_step
from tunelab.engine.guard import guarded_step
from tunelab.engine.lean import backward_pass
from tunelab.engine.position import Position


@dataclass
class Trainee:
    """What the loop trains, and how: ``loss_fn(model, batch)``, ``train_mode(model)`` at each
    epoch's start and after evaluations, ``evaluate()`` giving validation metrics."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    loss_fn: Callable
    train_mode: Callable[[torch.nn.Module], None]
    evaluate: Callable[[], dict] = dict
    sampler: object = None


def fit(
    trainee: Trainee,
    accelerator,
    config: TrainConfig,
    callbacks: list[Callback],
    state: TrainState | None = None,
    resume_rng: dict | None = None,
) -> TrainState:
    """Train until the step budget, an early stop or too many non-finite steps.

    ``state`` and ``resume_rng`` from a checkpoint resume where it was taken (see ``position``).
    """
    model, optimizer, scheduler = trainee.model, trainee.optimizer, trainee.scheduler
    steps_per_epoch = math.ceil(len(trainee.loader) / config.grad_accum_steps)
    total = config.max_steps or steps_per_epoch * config.epochs
    state = state or TrainState(total_steps=total, steps_per_epoch=steps_per_epoch)
    fire = _dispatcher(callbacks)
    position = Position(trainee.loader, accelerator, trainee.sampler, resume_rng)
    step = guarded_step(model, optimizer, accelerator, config, state.consecutive_skips)
    backward = backward_pass(accelerator, config.grad_accum_steps)
    # Accelerate decides when micro-batches end a step; without accumulation every one does.
    accumulating = config.grad_accum_steps > 1
    fire("on_train_start", state, model, optimizer)
    # The loss of the steps taken, kept on the device so the hot path never waits on it; read at log
    # time. A step's micro-batch losses join it once the step is taken (a skipped step leaves none).
    state.running_loss = torch.tensor(float(state.running_loss), device=accelerator.device)
    state.running_count = int(state.running_count)
    step_lr = optimizer.param_groups[0]["lr"]

    for epoch in range(state.epoch, math.ceil(total / steps_per_epoch)):
        if state.should_stop or state.step >= total:
            break
        state.epoch = epoch
        fire("on_epoch_start", state, model, optimizer)
        trainee.train_mode(model)
        for batch in position.batches(epoch, state.batches_into_epoch):
            state.batches_into_epoch += 1
            if step.starting:
                step.start()
            with accelerator.accumulate(model) if accumulating else contextlib.nullcontext():
                loss = trainee.loss_fn(model, batch)
                backward(loss)
                sync = accelerator.sync_gradients or not accumulating
                if sync:
                    fire("on_before_optimizer_step", state, model)
                    step.take()
            step.add(loss)
            if not sync:
                continue
            if not step.finish(state):  # skipped, leaving no trace
                if state.should_stop:
                    break
                continue
            # The rate this step used, before the schedule moves on (the highest group's: groups come highest first).
            step_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            state.step += 1
            logs = state.step % config.log_every == 0 or state.step == total
            evaluates = isinstance(config.eval_every, int) and state.step % config.eval_every == 0
            if logs or evaluates or saves_at_step(config.checkpoint_every, state.step):
                step.settle(state)
            if logs and state.running_count:  # none to log when every step since the last was skipped
                _log(accelerator, state, fire, step_lr)
            if state.diverged:  # settled on the device: no evaluation or checkpoint of this step
                break
            if evaluates:
                fire("on_evaluate", state, trainee.evaluate())
                trainee.train_mode(model)
            fire("on_step_end", state)
            if state.should_stop or state.step >= total:
                break
        step.settle(state)
        if config.eval_every == "epoch" and not state.diverged:
            fire("on_evaluate", state, trainee.evaluate())
        fire("on_epoch_end", state)
        state.batches_into_epoch = 0
    if state.running_count:  # steps since the last log line, in a run that ended early or skipped steps
        _log(accelerator, state, fire, step_lr)
    fire("on_train_end", state, model)
    return state


def _log(accelerator, state: TrainState, fire, lr: float) -> None:
    """The mean loss since the last log line (over every process), then a fresh count."""
    mean_loss = accelerator.reduce(state.running_loss / max(state.running_count, 1), reduction="mean").item()
    fire("on_log", state, {"step": state.step, "epoch": state.epoch, "loss": mean_loss, "lr": lr})
    state.running_loss.zero_()
    state.running_count = 0


def _dispatcher(callbacks: list[Callback]):
    """``fire(event, ...)`` calls each callback's handler of the event, skipping Callback's no-op
    defaults (two events fire every step, and most callbacks handle neither)."""
    handlers: dict[str, list] = {}

    def fire(event: str, *args) -> None:
        if event not in handlers:
            default = getattr(Callback, event)
            handlers[event] = [getattr(c, event) for c in callbacks if getattr(type(c), event, None) is not default]
        for handler in handlers[event]:
            handler(*args)

    return fire
