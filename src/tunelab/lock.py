"""One tunelab process per output folder: a second ``train -o DIR`` (or ``--resume DIR``) on a
folder another one is writing is refused at once, naming the holder.

The lock is ``.DIR.lock`` beside the folder (``--overwrite`` renames the folder itself aside, so
a lock inside it would move with it), held with ``flock``: the kernel drops it when its holder
dies, even by SIGKILL, so a lock left behind by a killed run never blocks the next one. The file
holds the holder's pid and command line, for the refusal to name. Written here because the
well-kept lock packages (filelock, portalocker) give no way to read who holds a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tunelab.errors import UserError


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


@contextlib.contextmanager
def holding(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; ``enabled`` False (a torchrun worker that is not the
    main process) holds nothing."""
    if not enabled:
        yield
        return
    handle = _acquire(Path(folder))
    try:
        yield
    finally:
        lock_path(folder).unlink(missing_ok=True)  # while still held: no one can take a stale file
        os.close(handle)


def _acquire(folder: Path) -> int:
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output: cannot create {path.parent}: {error.strerror or error}") from None
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise UserError(f"output: cannot lock {folder} ({path}): {error.strerror or error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            raise UserError(
                f"output: {folder} is in use by another tunelab process ({holder}); "
                "wait for it to finish or choose another --output"
            ) from None
        # The holder before us may have unlinked the file after we opened it: then ours is an
        # orphan nobody else sees, and we try again on the file now at the path.
        if _same_file(handle, path):
            break
        os.close(handle)
    record = {"pid": os.getpid(), "command": " ".join(sys.argv), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps(record).encode())
    return handle


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle).st_ino
    except FileNotFoundError:
        return False


def _holder(handle: int) -> str:
    """Who holds the lock, from its record; one taken a moment ago is given a second to write it."""
    for _ in range(50):
        try:
            record = json.loads(os.pread(handle, 4096, 0))
            return f"pid {record['pid']}, since {record['since']}: {record['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.02)
    return "it does not say which"
