"""The training loop: Accelerate for devices, processes, mixed precision and accumulation.

Everything else (what trains, early stopping, logging, saving) is a callback; the loop only
steps, and asks ``evaluate`` for validation metrics at the configured interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tunelab.config import TrainConfig
from tunelab.engine.callbacks import Callback, TrainState


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train_loader,
    loss_fn: Callable,
    evaluate: Callable[[], dict],
    accelerator,
    config: TrainConfig,
    callbacks: list[Callback],
    train_mode: Callable[[torch.nn.Module], None],
    sampler=None,
) -> TrainState:
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum_steps)
    total = config.max_steps or steps_per_epoch * config.epochs
    state = TrainState(total_steps=total, steps_per_epoch=steps_per_epoch)
    fire = _dispatcher(callbacks)
    parameters = [p for p in model.parameters() if p.requires_grad]
    fire("on_train_start", state, model, optimizer)
    running_loss, running_count = torch.zeros((), device=accelerator.device), 0

    for epoch in range(math.ceil(total / steps_per_epoch)):
        state.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        fire("on_epoch_start", state, model, optimizer)
        train_mode(model)
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used, before the schedule moves on
            scheduler.step()
            state.step += 1
            if state.step % config.log_every == 0 or state.step == total:
                mean_loss = accelerator.reduce(running_loss / running_count, reduction="mean").item()
                record = {"step": state.step, "epoch": epoch, "loss": mean_loss, "lr": step_lr}
                fire("on_log", state, record)
                running_loss, running_count = torch.zeros((), device=accelerator.device), 0
            if isinstance(config.eval_every, int) and state.step % config.eval_every == 0:
                fire("on_evaluate", state, evaluate())
                train_mode(model)
            if state.should_stop or state.step >= total:
                break
        if config.eval_every == "epoch":
            fire("on_evaluate", state, evaluate())
        fire("on_epoch_end", state)
        if state.should_stop or state.step >= total:
            break
    fire("on_train_end", state, model)
    return state


def _dispatcher(callbacks: list[Callback]):
    def fire(event: str, *args) -> None:
        for callback in callbacks:
            getattr(callback, event)(*args)

    return fire
