"""Set-up without Python's cyclic garbage collector, and what it made kept out of its way after.

Importing torch and transformers, reading a config and loading a model make millions of objects
that live as long as the process, and every full collection walks all of them again: 1.1 s of a
6 s cached start of a text run on this machine, for almost nothing collected. So a command runs
its set-up with the collector paused; once the model is loaded, what the set-up made is frozen
(``gc.freeze``: CPython's permanent generation, never walked) and collection resumes for the
rest, which then walks only what training makes. Frozen objects are still freed by reference
counting; only reference cycles among them wait until the command ends, when they are unfrozen.

Hand-written: no library manages the collector around a command.
"""

from __future__ import annotations

import contextlib
import gc


class _Pause:
    owned = False  # a pause of tunelab's own is on (the collector may be running again)
    froze = False


@contextlib.contextmanager
def set_up_uncollected():
    """Pause the collector until ``resume_collecting``, or the end of the block. Nested blocks,
    and a process that turned the collector off itself, are left as they are."""
    owner = gc.isenabled() and not _Pause.owned
    if owner:
        gc.disable()
        _Pause.owned = True
    try:
        yield
    finally:
        if owner:
            if _Pause.froze:
                gc.unfreeze()
            _Pause.owned = _Pause.froze = False
            gc.enable()


def resume_collecting() -> None:
    """Set-up is done: freeze what it made and collect again from here (once per pause)."""
    if _Pause.owned and not gc.isenabled() and not _Pause.froze:
        gc.freeze()
        _Pause.froze = True
        gc.enable()
