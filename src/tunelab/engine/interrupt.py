"""Ctrl-C during training stops at the next step boundary with a checkpoint saved there.

The first SIGINT only asks; the step in flight finishes (a step cut half-way through its
optimizer update could not be resumed exactly), a checkpoint of that step is written, and the
run ends with ``interrupted at step N; checkpoint saved ...; resume with ...``. A second SIGINT
stops at once, as Python's own handler would. Under several processes the handler is left as it
is: they would each stop at a different step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from tunelab.engine.callbacks import Callback, TrainState
from tunelab.engine.checkpoint import Checkpointer, checkpoint_name


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C at a step boundary; the message says what was saved."""


class StopAtStepBoundary(Callback):
    def __init__(self, checkpointer: Checkpointer, batches_per_epoch: int):
        self.checkpointer, self.batches_per_epoch = checkpointer, batches_per_epoch
        self.requested = False

    def ask(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def on_step_end(self, state: TrainState) -> None:
        # The last step of an epoch waits for the epoch's end: its evaluation belongs to it.
        if self.requested and state.batches_into_epoch < self.batches_per_epoch:
            self._stop(state, epoch=state.epoch, batches=state.batches_into_epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.requested:
            self._stop(state, epoch=state.epoch + 1, batches=0)

    def on_train_end(self, state: TrainState, model) -> None:
        if self.requested:  # asked during the last step: the resumed run goes straight to its results
            self._stop(state, epoch=state.epoch + 1, batches=0)

    def _stop(self, state: TrainState, epoch: int, batches: int) -> None:
        root, name = self.checkpointer.root, checkpoint_name(state.step)
        if not (root / name).is_dir():  # unless the Checkpointer has just saved this step
            self.checkpointer.save(state, epoch=epoch, batches=batches)
        raise Interrupted(
            f"interrupted at step {state.step}; checkpoint saved ({name}); "
            f"resume with tunelab train --resume {Path(root).parent}"
        )


@contextlib.contextmanager
def stopping_at_step_boundary(checkpointer: Checkpointer, batches_per_epoch: int, processes: int) -> Iterator[list]:
    """The callbacks (none or one) that answer Ctrl-C at a step boundary, for the block; none for
    ``processes`` other than 1 (0: the caller does not resume runs)."""
    if processes != 1 or threading.current_thread() is not threading.main_thread():
        yield []
        return
    callback = StopAtStepBoundary(checkpointer, batches_per_epoch)
    previous = signal.signal(signal.SIGINT, callback.ask)
    try:
        yield [callback]
    finally:
        signal.signal(signal.SIGINT, previous)
