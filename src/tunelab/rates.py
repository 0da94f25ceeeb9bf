"""The learning rate a run gets when ``optim.lr`` is unset: one rule for every strategy and batch.

The reference is the Hugging Face Trainer's 5e-5 at its batch of 8, the rate most fine-tuning
recipes start from. A larger batch takes fewer, less noisy steps, so the rate grows with the
square root of the batch (the scaling rule for Adam-style optimizers, Malladi et al. 2022, "On
the SDEs and Scaling Rules for Adaptive Gradient Algorithms"): 1e-4 at tunelab's batch of 32.
Methods that train few parameters need larger steps, by the factors their papers used (LoRA,
adapters and BitFit about 10x, IA3 and soft prompts far more): each strategy states its own
``rate_factor``. SGD, which does not divide by the gradient's scale, starts from 100 times Adam's rate.
"""

from __future__ import annotations

import math

REFERENCE_RATE = 5e-5
REFERENCE_BATCH = 8
OPTIMIZER_FACTOR = {"adamw": 1.0, "adam": 1.0, "rmsprop": 1.0, "sgd": 100.0}
HIGHEST_RATE = 10.0


def rate_factor(strategy: str) -> float:
    """The strategy's rate relative to full fine-tuning's (also what `tunelab compare` gives it
    when compare.lr names none)."""
    from tunelab.strategies import strategy_class  # here: the strategies import the config, which imports this

    return strategy_class(strategy).rate_factor


def default_rate(strategy: str, optimizer: str, batch: int) -> float:
    """The rate for ``strategy`` with ``optimizer`` at an effective batch of ``batch`` examples."""
    scaled = REFERENCE_RATE * math.sqrt(batch / REFERENCE_BATCH)
    return min(HIGHEST_RATE, scaled * OPTIMIZER_FACTOR[optimizer] * rate_factor(strategy))
