"""Accelerate's per-step calls, made directly where its wrapper adds only cost.

On the launches tunelab runs (one device, DDP on CPUs or GPUs, FSDP) without a gradient scaler,
Accelerate's ``backward`` divides the loss by the accumulation steps (by one too: an extra
kernel and autograd node), its ``clip_grad_norm_`` looks for DTensors before calling torch's,
and its optimizer wrapper looks for optional packages on every step. Each is tens of
microseconds: together about 5% of a small CNN's step on a CPU. With fp16's gradient scaler,
DeepSpeed or XLA, Accelerate's own calls are used, since there they do the work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PLAIN_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU", "FSDP")
# FSDP clips through the wrapped model (its gradients are sharded); the others hold full gradients.
FULL_GRADIENT_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU")


def _plain(accelerator, types: tuple[str, ...] = PLAIN_TYPES) -> bool:
    return accelerator.scaler is None and accelerator.distributed_type.name in types


def stepped_optimizer(optimizer, accelerator):
    """What the loop steps and the schedule follows: the optimizer Accelerate wrapped, wherever its
    wrapper adds nothing but cost. Without a gradient scaler (fp16) or XLA its ``step`` only looks
    twice for an optional package on disk (LOMO) and its ``zero_grad`` inspects a signature: 0.3 ms
    a step, a tenth of the digits CNN's. The loop zeroes gradients at sync steps only, as it would.
    Only the launches tunelab runs (one device, DDP, FSDP) qualify: DeepSpeed and XLA step inside
    the wrapper."""
    return getattr(optimizer, "optimizer", optimizer) if _plain(accelerator) else optimizer


def backward_pass(accelerator, accumulation_steps: int) -> Callable[[torch.Tensor], None]:
    """``accelerator.backward``: the loss divided by ``accumulation_steps``, then backward. Those
    may differ from the Accelerator's own (the range test steps on every batch)."""
    if not _plain(accelerator):
        ratio = accelerator.gradient_accumulation_steps / accumulation_steps
        # Accelerate divides by its own accumulation steps; the ratio makes that a division by these.
        return accelerator.backward if ratio == 1 else lambda loss: accelerator.backward(loss * ratio)
    if accumulation_steps == 1:
        return torch.Tensor.backward
    return lambda loss: (loss / accumulation_steps).backward()


def gradient_clipper(accelerator) -> Callable[[list, float], torch.Tensor | None]:
    """``accelerator.clip_grad_norm_``, returning the total norm before clipping."""
    if _plain(accelerator, FULL_GRADIENT_TYPES):
        return torch.nn.utils.clip_grad_norm_
    return accelerator.clip_grad_norm_
