"""Process-level set-up shared by every recipe: quiet libraries, seeds, the Accelerator."""

from __future__ import annotations

import os
import resource
import sys
import time

import torch

from tunelab.config import TrainConfig
from tunelab.errors import UserError


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def process_started_at() -> float:
    """When this process was created (the interpreter and every import count), as ``time.time()``;
    when the system will not say, when tunelab was first imported."""
    from tunelab import PROCESS_STARTED_AT

    try:
        return min(_linux_start() if sys.platform == "linux" else _psutil_start(), PROCESS_STARTED_AT)
    except (OSError, ValueError, IndexError, ImportError):
        return PROCESS_STARTED_AT


def _linux_start() -> float:
    """The kernel's start time (clock ticks since boot) against its clock since boot. psutil adds
    the ticks to the boot time, which the kernel gives in whole seconds, and which drifts from the
    wall clock as that is adjusted: on this machine it put every start 0.4 s early."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces
    running = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - running


def _psutil_start() -> float:
    import psutil

    try:
        return psutil.Process().create_time()
    except psutil.Error as error:
        raise OSError(str(error)) from None


def process_state():
    """This process's place in the launch (torchrun): rank, world size, main or not.

    Must pick the device as ``make_accelerator`` does: the state is created once per process, and
    created without ``cpu=True`` on a CPU-only machine it ignores torchrun and reports one process.
    """
    from accelerate.state import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(train: TrainConfig, cpu: bool = False):
    """A fresh Accelerator; batches are global and split across processes (split_batches).
    ``cpu`` keeps it on the CPU even beside a GPU (int8 models)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available() and not cpu
    if train.mixed_precision == "fp16" and not cuda:
        raise UserError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 on CPU")
    # Several runs in one process (demo, tests) each get their own settings.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    threads = cpu_threads(train.threads)
    if threads and not cuda:
        torch.set_num_threads(threads)
    accelerator = Accelerator(
        mixed_precision="no" if cpu else train.mixed_precision,
        gradient_accumulation_steps=train.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        cpu=not cuda,
    )
    for name, size in (("train.batch_size", train.batch_size), ("train.eval_batch_size", train.eval_batch_size)):
        if size % accelerator.num_processes:
            raise UserError(f"{name}: {size} does not divide over {accelerator.num_processes} processes")
    return accelerator


# torch's own choice (the physical cores), read before any run of this process changes it.
DEFAULT_THREADS = torch.get_num_threads()


def cpu_threads(setting: str | int) -> int | None:
    """Threads for this process: as set; under ``auto``, the cores shared among the processes
    torchrun started on this machine (so two processes on two cores do not each run two), and
    for a single process whatever torch (or the caller) has chosen (None: leave it)."""
    if setting != "auto":
        return int(setting)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, DEFAULT_THREADS // local_processes) if local_processes > 1 else None


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
