"""The learning-rate range test (Smith, 2017; the "LR finder" of fastai): train a few hundred
steps with the rate rising exponentially from very small to very large, smooth the loss, stop
when it diverges, and read a good rate off the curve.

Written here because it must run inside tunelab's own loop with the strategy applied (LoRA and
full fine-tuning train different parameters and get different curves); the maintained finders
(fastai's, torch-lr-finder) drive their own training loops. Weights, optimizer state and torch's
random state are put back afterwards, so the run that follows starts exactly as it would have.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tunelab.engine.lean import backward_pass, gradient_clipper

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum
SKIP_START = 5  # the first points are noisy: never read the steepest slope there
LEAST_DROP = 0.05  # a curve whose smoothed loss never falls this fraction below its start says nothing


def range_test(model, optimizer, loader, loss_fn, accelerator, train_mode, start=1e-7, end=10.0, steps=100) -> dict:
    """Losses at exponentially rising rates, then the suggestions; the model and optimizer are
    restored. Parameter groups keep their ratios to each other (discriminative rates)."""
    saved_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    saved_optimizer = optimizer.state_dict()
    saved_optimizer = {"state": {k: {n: _copy(v) for n, v in s.items()} for k, s in saved_optimizer["state"].items()},
                       "param_groups": [dict(g) for g in saved_optimizer["param_groups"]]}  # fmt: skip
    reference = max(group["lr"] for group in optimizer.param_groups)
    ratios = [group["lr"] / reference for group in optimizer.param_groups]
    rates, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, f"reached the end of the range ({end:g})"
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    # A step on every batch: the run's gradient accumulation (Accelerate's division by its steps) is not applied.
    backward, clip = backward_pass(accelerator, 1), gradient_clipper(accelerator)
    with torch.random.fork_rng(devices=devices):
        batches = _forever(loader)
        for step in range(steps):
            rate = start * (end / start) ** (step / max(1, steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = rate * ratio
            train_mode(model)
            loss = loss_fn(model, next(batches))
            value = float(loss.detach())
            if not math.isfinite(value):
                stopped = f"the loss became non-finite at {rate:.2g}"
                break
            backward(loss)
            clip(parameters, 1.0e6)  # no clipping, but the same all-reduce as training
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smooth = average / (1 - SMOOTHING ** (step + 1))
            rates.append(rate)
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            if step > SKIP_START and smooth > DIVERGED * best:
                stopped = f"the loss diverged at {rate:.2g} ({DIVERGED:g}x its minimum)"
                break
    model.load_state_dict(saved_weights)
    optimizer.load_state_dict(saved_optimizer)
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        group["lr"] = reference * ratio
    return {"rates": rates, "losses": losses, "smoothed": smoothed, "stopped": stopped} | suggestions(rates, smoothed)


def suggestions(rates: list[float], smoothed: list[float]) -> dict:
    """``minimum_tenth``: a tenth of the rate at the lowest smoothed loss; ``steepest``: where the
    loss falls fastest against log-rate, before the minimum; ``suggested``: the smaller of the two
    (both sit on the descending part of the curve; the smaller is the safer)."""
    if len(rates) < SKIP_START + 3:
        raise ValueError("the range test stopped too early to read a rate off it; raise its start or steps")
    lowest = int(np.argmin(smoothed))
    start = smoothed[SKIP_START]
    if smoothed[lowest] > (1 - LEAST_DROP) * start:
        raise ValueError(
            f"the loss never fell {LEAST_DROP:.0%} below its start ({start:.3g}) anywhere in the range, so no "
            "rate can be read off it; give the test more steps (optim.lr_find_steps) or a wider range"
        )
    minimum_tenth = rates[lowest] / 10
    window = slice(SKIP_START, max(lowest, SKIP_START + 2))
    slopes = np.gradient(np.array(smoothed), np.log(np.array(rates)))
    steepest = rates[SKIP_START + int(np.argmin(slopes[window]))]
    return {"minimum_tenth": minimum_tenth, "steepest": steepest, "suggested": min(minimum_tenth, steepest)}


def _forever(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the range test needs training rows; the train split is empty")


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
