"""Steps with non-finite gradients skipped on the device, so the loop never waits on the GPU.

The host way (``train.nonfinite_check: host``) reads the gradient norm every step to decide: on a
GPU that read waits for the step's kernels, so the host cannot queue the next batch's while they
run. Here the norm's finiteness stays a device tensor: PyTorch's fused Adam and AdamW
kernels take it as ``found_inf`` (as the AMP gradient scaler hands it to them) and leave weights,
moments and step counts untouched when it is set; batch-norm statistics are put back with
``torch.where`` and the step's loss is left out of the logged mean the same way. The host learns
what was skipped in one read when it ``settle``s: at log intervals, evaluations, checkpoints and
the end. The price: a skipped step keeps its place in the schedule and the step count, and a
run that diverges stops at the next settle rather than at once.

Hand-written: Accelerate and PyTorch skip on the device only inside the fp16 gradient scaler.
"""

from __future__ import annotations

import torch

from tunelab.engine.lean import FULL_GRADIENT_TYPES

# Not SGD: a skipped first step would leave its momentum buffers as allocated, uninitialised.
FUSED_KINDS = (torch.optim.Adam, torch.optim.AdamW)


def skips_on_device(setting: str, accelerator, optimizer) -> bool:
    """Whether this run skips on the device: ``auto`` does on a GPU, where reading the norm stalls
    it; either way only with a fused optimizer, no fp16 scaler (it skips by itself) and whole
    gradients (not FSDP's shards)."""
    if setting == "host":
        return False
    inner = getattr(optimizer, "optimizer", optimizer)
    possible = (
        isinstance(inner, FUSED_KINDS)
        and bool(inner.defaults.get("fused"))
        and accelerator.scaler is None
        and accelerator.distributed_type.name in FULL_GRADIENT_TYPES
    )
    return possible and (setting == "device" or accelerator.device.type == "cuda")


class DeviceSkips:
    """The skip decision and its counts, kept on the device between settles."""

    def __init__(self, device, consecutive: int = 0):
        zero = torch.zeros((), device=device)
        self.steps, self.batches, self.worst = zero.clone(), zero.clone(), zero.clone()
        self.consecutive = torch.full((), float(consecutive), device=device)  # carried over a resume

    def step(self, optimizer, norm: torch.Tensor | None) -> torch.Tensor:
        """Step unless ``norm`` is not finite; returns that as 1.0 or 0.0 (on the device)."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        found = torch.zeros((), device=self.steps.device) if norm is None else (~torch.isfinite(norm)).float()
        optimizer.found_inf = found
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return found

    def record(self, found: torch.Tensor, batches: int, loss: torch.Tensor, buffers, before) -> torch.Tensor:
        """Count the step and undo its traces if it was skipped; returns its loss, 0 if skipped."""
        skipped = found.bool()
        for buffer, kept in zip(buffers, before, strict=True):
            buffer.copy_(torch.where(skipped, kept, buffer))
        self.steps += found
        self.batches += found * batches
        self.consecutive.add_(found).mul_(found)  # back to 0 at a step taken
        torch.maximum(self.worst, self.consecutive, out=self.worst)
        return torch.where(skipped, torch.zeros_like(loss), loss)

    def settle(self, state, max_bad_steps: int) -> None:
        """One read: the skipped steps since the last settle join ``state``'s counts, and the run
        stops if ``max_bad_steps`` came in a row."""
        steps, batches, consecutive, worst = (int(value) for value in torch.stack(
            [self.steps, self.batches, self.consecutive, self.worst]
        ).tolist())  # fmt: skip
        state.skipped_steps += steps
        state.running_count -= batches
        state.consecutive_skips = consecutive
        for counter in (self.steps, self.batches):
            counter.zero_()
        self.worst.copy_(self.consecutive)
        if worst >= max_bad_steps and not state.diverged:
            state.stop_diverged(worst)
