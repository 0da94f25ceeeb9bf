"""Two processes on one output folder: exactly one runs, the other is refused naming the holder;
a lock left by a SIGKILLed run does not block the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunelab.lock import holding, lock_path

# What each racer does: wait for the start signal, then take the folder as `tunelab train` does
# (lock, then create the run directory), hold it a moment, and leave a mark that it ran.
RACER = """
import os, sys, time
from pathlib import Path
from tunelab.errors import UserError
from tunelab.lock import holding
from tunelab.rundir import prepare_run_dir

output, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
try:
    with holding(output):
        prepare_run_dir(output, overwrite=False)
        (output / f"ran-{os.getpid()}").write_text("")
        time.sleep(0.3)
except UserError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
"""


def test_twenty_races_on_one_folder_each_let_exactly_one_process_run(tmp_path):
    for round_number in range(20):
        output, go = tmp_path / f"run-{round_number}", tmp_path / f"go-{round_number}"
        racers = [
            subprocess.Popen([sys.executable, "-c", RACER, str(output), str(go)], stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        time.sleep(0.3)  # both started and waiting
        go.touch()
        outcomes = [(racer.wait(timeout=30), racer.stderr.read()) for racer in racers]
        codes = sorted(code for code, _ in outcomes)
        assert codes == [0, 2], (round_number, outcomes)
        [refusal] = [err for code, err in outcomes if code == 2]
        winner = next(racer.pid for racer, (code, _) in zip(racers, outcomes, strict=True) if code == 0)
        assert f"{output} is in use by another tunelab process (pid {winner}" in refusal, refusal
        assert len(refusal.strip().splitlines()) == 1
        assert sorted(path.name for path in output.iterdir()) == [f"ran-{winner}"]
        assert not lock_path(output).exists()  # released and removed by the winner


CNN = {
    "task": "image-classification",
    "model": {"source": "cnn"},
    "data": {"train": "digits", "digits_classes": [0, 1], "digits_train_per_class": 30},
    "train": {"epochs": 3000, "batch_size": 10, "checkpoint_every": 2, "log_every": 1},  # killed long before
}


def tunelab(*argv, **kwargs) -> subprocess.Popen:
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tunelab", *map(str, argv), "-q"]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment,
                            **kwargs)  # fmt: skip


def wait_for_checkpoint(run_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not any((run_dir / "checkpoints").glob("step-*")):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint in 120 s"
        time.sleep(0.05)


def test_a_second_train_on_a_busy_folder_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(CNN), encoding="utf-8")
    run_dir = tmp_path / "run"
    first = tunelab("train", config, "-o", run_dir)
    try:
        wait_for_checkpoint(run_dir, first)
        others = [tunelab(*argv) for argv in (("train", config, "-o", run_dir),
                                              ("train", config, "-o", run_dir, "--overwrite"),
                                              ("train", "--resume", run_dir))]  # fmt: skip
        for second in others:
            assert second.wait(timeout=120) == 2
            err = second.stderr.read().strip()
            assert len(err.splitlines()) == 1, err
            assert f"error: output: {run_dir} is in use by another tunelab process (pid {first.pid}" in err
            assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert lock_path(run_dir).exists()  # left behind by the killed run ...
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(CNN | {"train": {"epochs": 1, "batch_size": 10}}), encoding="utf-8")
    after = tunelab("train", short, "-o", run_dir, "--overwrite")
    assert after.wait(timeout=300) == 0, after.stderr.read()  # ... and not in the way
    assert (run_dir / "results.json").exists()
    assert not lock_path(run_dir).exists()


def test_the_lock_is_refused_in_process_too_and_released_after_an_error(tmp_path):
    output = tmp_path / "run"
    with holding(output):
        from tunelab.errors import UserError

        with pytest.raises(UserError, match=f"pid {os.getpid()}"), holding(output):
            pass
    with pytest.raises(RuntimeError), holding(output):
        raise RuntimeError("the run failed")
    with holding(output):  # free again
        pass
