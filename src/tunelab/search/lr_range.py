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

SMOOTHING = 0.98  # the running average that watches for divergence while the test runs
DIVERGED = 4.0  # stop once that average exceeds this many times its minimum
LEAST_DROP = 0.05  # a curve whose smoothed loss never falls this fraction below its start says nothing
NOISE_MARGIN = 3.0  # ... nor one whose fall is within this many standard errors of the batch noise
MIN_POINTS = 8  # fewer points than this cannot be read


def range_test(model, optimizer, loader, loss_fn, accelerator, train_mode, start=1e-7, end=10.0, steps=100) -> dict:
    """Losses at exponentially rising rates, then the suggestions; the model and optimizer are
    restored. Parameter groups keep their ratios to each other (discriminative rates)."""
    saved_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    saved_optimizer = optimizer.state_dict()
    saved_optimizer = {"state": {k: {n: _copy(v) for n, v in s.items()} for k, s in saved_optimizer["state"].items()},
                       "param_groups": [dict(g) for g in saved_optimizer["param_groups"]]}  # fmt: skip
    reference = max(group["lr"] for group in optimizer.param_groups)
    ratios = [group["lr"] / reference for group in optimizer.param_groups]
    rates, losses = [], []
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
            best = min(best, smooth)
            if step > MIN_POINTS and smooth > DIVERGED * best:
                stopped = f"the loss diverged at {rate:.2g} ({DIVERGED:g}x its minimum)"
                break
    model.load_state_dict(saved_weights)
    optimizer.load_state_dict(saved_optimizer)
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        group["lr"] = reference * ratio
    return {"rates": rates, "losses": losses, "stopped": stopped} | read_curve(rates, losses)


def read_curve(rates: list[float], losses: list[float]) -> dict:
    """Smooth the raw losses and read a rate off the curve, or refuse a curve that says nothing.

    The smoothing is a centred moving average: a running average lags (at 0.98 over a hundred
    steps its minimum sits half a decade late) and its first points swing with single batches,
    which is how a dip in the noise at 3.7e-7 once became the suggestion. The points within half a
    window of the start, where the window is incomplete, are never read.

    The *descent* is the stretch before the minimum over which the curve falls from its plateau
    and stays below it; a fall smaller than 5% of the plateau or within the smoothed curve's own
    noise is refused. ``suggested`` is the middle of the descent on the log-rate axis, as fastai's
    ``valley`` (its default) takes a point half-way along the longest falling stretch: fast enough
    to learn, well before the minimum where the loss stops falling. ``steepest`` (the fastest fall)
    and ``minimum_tenth`` (a tenth of the rate at the minimum), the older rules, are reported too.
    """
    if len(rates) < MIN_POINTS:
        raise ValueError("the range test stopped too early to read a rate off it; raise its start or steps")
    raw = np.asarray(losses, dtype=float)
    window = _window(len(raw))
    smoothed = _centred_mean(raw, window)
    first = window // 2  # the first point with a whole window around it
    plateau = float(np.median(smoothed[first : first + window]))
    lowest = first + int(np.argmin(smoothed[first:]))
    drop = plateau - smoothed[lowest]
    noise = _noise(raw, smoothed) / np.sqrt(window)  # the smoothed curve's own wobble
    if drop < LEAST_DROP * plateau:
        raise ValueError(
            f"the loss never fell {LEAST_DROP:.0%} below its start ({plateau:.3g}) anywhere in the range, so no "
            "rate can be read off it; give the test more steps (optim.lr_find_steps) or a wider range"
        )
    if drop < NOISE_MARGIN * noise:
        raise ValueError(
            f"the loss fell by {drop:.3g}, within the noise of single batches ({noise:.3g}), so no rate can be "
            "read off it; give the test more steps (optim.lr_find_steps) or larger batches"
        )
    # The descent begins at the last point before the minimum still on the plateau (within a tenth
    # of the whole fall from it, or twice the curve's noise if more): earlier is the plateau's own wobble.
    on_plateau = np.nonzero(smoothed[first : lowest + 1] >= plateau - max(0.1 * drop, 2 * noise))[0]
    begin = first + (int(on_plateau[-1]) if len(on_plateau) else 0)
    slopes = np.gradient(smoothed, np.log(np.asarray(rates)))
    steepest = rates[begin + int(np.argmin(slopes[begin : lowest + 1]))]
    return {
        "smoothed": smoothed.tolist(),
        "descent": [rates[begin], rates[lowest]],
        "steepest": steepest,
        "minimum_tenth": rates[lowest] / 10,
        "suggested": float(np.sqrt(rates[begin] * rates[lowest])),
    }


def _window(points: int) -> int:
    """An odd window of about a twelfth of the points (at least 5): a hundred steps over eight
    decades average over two thirds of a decade."""
    return max(5, (points // 12) | 1)


def _centred_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean over ``window`` points centred on each; shrinking at the ends."""
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    low = np.clip(np.arange(len(values)) - half, 0, None)
    high = np.clip(np.arange(len(values)) + half + 1, None, len(values))
    return (sums[high] - sums[low]) / (high - low)


def _noise(raw: np.ndarray, smoothed: np.ndarray) -> float:
    """The batch-to-batch spread of the loss around its smoothed curve (a robust standard deviation)."""
    residuals = raw - smoothed
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals))))


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
