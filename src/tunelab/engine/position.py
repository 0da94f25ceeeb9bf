"""Where the loop is in the data: each epoch's batch order, drawn the same way again on resume.

A checkpoint's state resumes mid-epoch: the same epoch order is drawn again and the batches
already trained on are skipped. Starting a batch iterator draws a seed from torch's generator,
so the random state saved with the checkpoint is restored where the interrupted run took it:
before that draw for an epoch-end checkpoint, after it for a mid-epoch one.
"""

from __future__ import annotations

from collections.abc import Iterator

from tunelab.engine.checkpoint import restore_rng


class Position:
    def __init__(self, loader, accelerator, sampler=None, resume_rng: dict | None = None):
        self.loader, self.accelerator, self.sampler, self.resume_rng = loader, accelerator, sampler, resume_rng

    def batches(self, epoch: int, skip: int) -> Iterator:
        """The batches of ``epoch`` after the first ``skip`` (those trained on before a resume)."""
        batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        # Accelerate's loaders re-seed their sampler with an iteration count of their own at each
        # pass; pin it to the epoch so a resumed (or freshly skipped) loader draws the same order.
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if hasattr(getattr(self.loader, "dataset", None), "set_epoch"):  # augmentation drawn per (seed, epoch)
            self.loader.dataset.set_epoch(epoch)
        if not skip:
            self._restore()  # an epoch-end checkpoint: its state predates this epoch's iterator
        for batch in batches:
            self._restore()  # mid-epoch: the interrupted run had drawn the iterator's seed already
            yield batch

    def _restore(self) -> None:
        if self.resume_rng is not None:
            restore_rng(self.resume_rng)
            self.resume_rng = None
