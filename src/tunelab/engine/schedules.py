"""Learning-rate schedules, each with optional linear warmup.

Written as LambdaLR multipliers rather than taken from transformers' ``get_scheduler`` because
that offers no exponential decay and no one-cycle, and chaining torch's own schedulers for
warmup is harder to checkpoint. One-cycle uses torch's ``OneCycleLR`` directly.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from tunelab.config import ScheduleConfig


def warmup_steps(config: ScheduleConfig, total_steps: int) -> int:
    return config.warmup_steps or int(config.warmup_ratio * total_steps)


def lr_multiplier(config: ScheduleConfig, total_steps: int):
    """Return step -> factor on the base learning rate."""
    warmup = warmup_steps(config, total_steps)
    decay_steps = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / decay_steps)
        if config.name == "linear":
            return max(0.0, 1.0 - progress)
        if config.name == "cosine":
            floor = config.min_lr_ratio
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if config.name == "exponential":
            return config.gamma ** (step - warmup)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int) -> LRScheduler:
    if config.name == "one-cycle":
        warmup = warmup_steps(config, total_steps)
        return OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=warmup / total_steps if warmup else 0.3,
            cycle_momentum="betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0,
        )
    return LambdaLR(optimizer, lr_multiplier(config, total_steps))
