"""Runs that survive kill -9, damaged or planted checkpoints, non-finite steps and a full disk.

The kill -9 test trains the built-in CNN in subprocesses; everything else runs in-process
through ``main`` on one small CNN run (module scope) whose checkpoints each test copies and
damages.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import tunelab.engine.checkpoint as checkpoint_module
from tunelab.cli import main
from tunelab.engine.callbacks import TrainState
from tunelab.engine.checkpoint import CorruptCheckpoint, complete_checkpoints, verify
from tunelab.loss import TrainingLoss

DIGITS = {"train": "digits", "digits_classes": [0, 1, 2], "digits_train_per_class": 40}
STEPS_PER_EPOCH = 15  # 120 training images in batches of 8


def cnn_config(**train) -> dict:
    return {
        "task": "image-classification",
        "seed": 3,
        "model": {"source": "cnn"},  # dropout on: resuming must restore the RNG exactly
        "data": DIGITS,
        "optim": {"lr": 3.0e-3},
        "train": {"epochs": 2, "batch_size": 8, "checkpoint_every": 3, "log_every": 2, "eval_every": 3} | train,
        "evaluate": {"max_train_examples": 40},
    }


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def checkpoint_names(run_dir: Path) -> list[str]:
    return checkpoint_names_in(run_dir / "checkpoints")


def checkpoint_names_in(root: Path) -> list[str]:
    return [folder.name for folder in complete_checkpoints(root)]


def partial_folders(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.partial"))


def run_cli(capsys, *argv) -> tuple[int, str]:
    """``main`` in-process: exit code and stderr with rich's line wrapping undone."""
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- 1. kill -9 at ten moments, resumed each time: bit-identical to an uninterrupted run -------------

KILL_EPOCHS = 4
KILL_TOTAL = KILL_EPOCHS * STEPS_PER_EPOCH
PAUSE = 0.04  # seconds between the files of a checkpoint while a kill is aimed at the write
WRITES = ("checkpoint write", "epoch-end rewrite", "after last step")


def launch(argv: list, log: Path, slow_checkpoint: float | None = None) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TUNELAB_TEST_SLOW_CHECKPOINT", None)
    if slow_checkpoint:
        env["TUNELAB_TEST_SLOW_CHECKPOINT"] = str(slow_checkpoint)
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tunelab", *map(str, argv), "-q"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def wait_for(process: subprocess.Popen, condition, what: str, log: Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if process.poll() is not None:
            raise AssertionError(f"run exited ({process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)
    return found


def last_logged_step(run_dir: Path, since_ns: int) -> int:
    """The newest train step in metrics.jsonl, if this attempt wrote it (a resumed run rewrites the
    file before logging, so stale lines from the killed attempt are not mistaken for progress)."""
    metrics = run_dir / "metrics.jsonl"
    try:
        if metrics.stat().st_mtime_ns <= since_ns:
            return -1
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return -1
    steps = [json.loads(line)["step"] for line in lines[-3:] if line.endswith("}") and '"train"' in line]
    return max(steps, default=-1)


def new_partial(run_dir: Path, since_ns: int, min_step: int, rewrite: bool = False) -> str | None:
    """A checkpoint this attempt is writing now, for ``min_step`` or later; with ``rewrite``, only
    one whose step already has a complete checkpoint (the epoch-end save after the step-end one)."""
    root = run_dir / "checkpoints"
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return None
    for name in names:
        if not name.endswith(".partial") or int(name.split("-")[1].split(".")[0]) < min_step:
            continue
        try:
            fresh = (root / name).stat().st_mtime_ns > since_ns
        except FileNotFoundError:  # renamed to its final name meanwhile
            continue
        if fresh and (not rewrite or (root / name[1:].removesuffix(".partial")).is_dir()):
            return name
    return None


def newest_checkpoint(run_dir: Path) -> str:
    names = checkpoint_names(run_dir)
    if not names:
        return "none"
    state = json.loads((run_dir / "checkpoints" / names[0] / "state.json").read_text())["train_state"]
    return f"{names[0]} (epoch {state['epoch']}, {state['batches_into_epoch']} batches in)"


def kill_plan(seed: int) -> list[tuple[str, float]]:
    """Ten moments spread over a run: start-up; one step drawn from each eighth of training, killed
    there alternately anywhere and inside a checkpoint write (one of them the epoch-end rewrite of
    a checkpoint the step end had just saved); then after the last step (last checkpoints, final
    evaluation)."""
    rng = random.Random(seed)
    edges = [round(2 + index * (KILL_TOTAL - 4) / 8) for index in range(9)]
    targets = [rng.randrange(low, high) for low, high in zip(edges, edges[1:], strict=False)]
    kinds = ["training", "checkpoint write"] * 4
    kinds[4], targets[4] = "epoch-end rewrite", 2 * STEPS_PER_EPOCH
    return [
        ("start-up", rng.uniform(0.3, 2.0)),
        *zip(kinds, targets, strict=True),
        ("after last step", rng.uniform(0, 0.45)),
    ]


def kill_at(kind: str, target: float, process: subprocess.Popen, run_dir: Path, log: Path, rng) -> str:
    """Wait for the moment ``kind``/``target`` names, SIGKILL the process; say where it was."""
    since = time.time_ns()  # files older than this are the killed attempts' (this one takes seconds to start)
    try:
        if kind == "start-up":
            time.sleep(target)
            return "config.yaml written" if (run_dir / "config.yaml").exists() else "no config.yaml yet"
        if kind == "training":
            wait_for(process, lambda: last_logged_step(run_dir, since) >= target, f"step {target}", log)
            time.sleep(rng.uniform(0.0, 0.03))
            return f"step {last_logged_step(run_dir, since)} logged"
        if kind == "after last step":
            wait_for(process, lambda: last_logged_step(run_dir, since) >= KILL_TOTAL, "the last step", log)
            time.sleep(target)
            return "last step logged"
        rewrite = kind == "epoch-end rewrite"
        name = wait_for(process, lambda: new_partial(run_dir, since, target, rewrite), f"a write at {target}+", log)
        time.sleep(rng.uniform(0.0, 5 * PAUSE))
        return f"{name} being written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def kill_repeatedly(config: Path, run_dir: Path, log: Path) -> str:
    """Start the run, kill it at each moment of the plan, resuming each time; describe the kills."""
    rng = random.Random(7)
    happened = []
    for kind, target in kill_plan(seed=11):
        if (run_dir / "config.yaml").exists():
            argv = ["train", "--resume", run_dir]
        else:  # killed before the run directory held its config: start again
            argv = ["train", config, "-o", run_dir, "--overwrite"]
        started = time.monotonic()
        where = kill_at(kind, target, launch(argv, log, PAUSE if kind in WRITES else None), run_dir, log, rng)
        left = [folder.name for folder in partial_folders(run_dir / "checkpoints")]
        shown = round(target, 2) if kind in ("start-up", "after last step") else target
        happened.append((kind, shown, f"{time.monotonic() - started:.2f}s", where, newest_checkpoint(run_dir), left))
    report = "\n".join(map(str, happened))
    print(f"kills (kind, target, after launch, where, newest complete checkpoint, partial folders left):\n{report}")
    assert not (run_dir / "results.json").exists(), f"a killed attempt finished:\n{report}"
    mid_write = [entry for entry in happened if entry[0] in WRITES[:2] and entry[-1]]
    assert len(mid_write) >= 4, f"too few kills landed inside a checkpoint write:\n{report}"
    return report


def test_kill_minus_9_at_ten_moments_then_resume_is_bit_identical(tmp_path):
    config = write_yaml(
        tmp_path / "run.yaml",
        cnn_config(epochs=KILL_EPOCHS, eval_every=5, keep_checkpoints=3, metric="loss", load_best_at_end=False),
    )
    uninterrupted, interrupted, log = tmp_path / "A", tmp_path / "B", tmp_path / "B.log"
    reference = launch(["train", config, "-o", uninterrupted], tmp_path / "A.log")  # alongside B: 2 cores
    try:
        kill_repeatedly(config, interrupted, log)
        final = launch(["train", "--resume", interrupted], log)
        assert final.wait(timeout=120) == 0, log.read_text()
    finally:
        assert reference.wait(timeout=120) == 0, (tmp_path / "A.log").read_text()

    model = "model/model.safetensors"
    assert (interrupted / model).read_bytes() == (uninterrupted / model).read_bytes()
    best = "checkpoints/best/model.safetensors"
    assert (interrupted / best).read_bytes() == (uninterrupted / best).read_bytes()
    assert (interrupted / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()
    expected, got = results_of(uninterrupted), results_of(interrupted)
    for key in ("final", "base", "best", "steps", "epochs_completed", "skipped_steps", "diverged"):
        assert got[key] == expected[key], key
    assert checkpoint_names(interrupted) == checkpoint_names(uninterrupted)
    assert partial_folders(interrupted) == [] and partial_folders(uninterrupted) == []


# -- a finished run to damage: each test copies it and makes it look interrupted ---------------------


FINISHED_CONFIG = cnn_config(keep_checkpoints=3, load_best_at_end=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cnn-run")
    # The final weights are the last step's, so a resumed run that ends elsewhere shows.
    config = write_yaml(folder / "run.yaml", FINISHED_CONFIG)
    assert main(["train", str(config), "-o", str(folder / "run"), "-q"]) == 0
    return folder / "run"


@pytest.fixture
def interrupted_run(finished_run, tmp_path) -> Path:
    """A copy of the finished run as if killed after its last checkpoint (no results, no model)."""
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    for name in ("results.json", "report.html"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "model")
    return run_dir


def rehash(folder: Path) -> None:
    """Record every file's current size and sha256, so only the loader's other checks can object."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def resume_past_newest(capsys, run_dir: Path, finished_run: Path, reason: str) -> None:
    """Resume; the newest checkpoint is refused for ``reason``, the one before is used, and the run
    ends exactly where the uninterrupted run ended."""
    newest, previous = checkpoint_names(run_dir)[:2]
    code, err = run_cli(capsys, "train", "--resume", run_dir, "-q")
    err = one_line(err)
    assert code == 0, err
    assert f"checkpoint {newest} refused: {reason}" in err
    assert f"resuming from {previous} (step {int(previous.split('-')[1])})" in err
    assert "Traceback" not in err
    for path in ("model/model.safetensors", "metrics.jsonl"):
        assert (run_dir / path).read_bytes() == (finished_run / path).read_bytes(), path
    assert results_of(run_dir)["final"] == results_of(finished_run)["final"]


def test_a_truncated_checkpoint_is_refused_and_the_previous_one_used(capsys, interrupted_run, finished_run):
    weights = interrupted_run / "checkpoints" / checkpoint_names(interrupted_run)[0] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    resume_past_newest(capsys, interrupted_run, finished_run, "model.safetensors does not match its recorded hash")


def test_a_flipped_byte_is_refused_and_the_previous_one_used(capsys, interrupted_run, finished_run):
    optimizer = interrupted_run / "checkpoints" / checkpoint_names(interrupted_run)[0] / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0x01
    optimizer.write_bytes(bytes(data))
    resume_past_newest(capsys, interrupted_run, finished_run, "optimizer.pt does not match its recorded hash")


def test_weights_of_the_wrong_shape_are_refused_even_with_matching_hashes(capsys, interrupted_run, finished_run):
    folder = interrupted_run / "checkpoints" / checkpoint_names(interrupted_run)[0]
    tensors = load_file(folder / "model.safetensors")
    name = next(name for name, tensor in tensors.items() if tensor.dim() > 1)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    save_file(tensors, folder / "model.safetensors")
    rehash(folder)
    verify(folder)  # the hashes alone would pass it
    resume_past_newest(capsys, interrupted_run, finished_run, f"model.safetensors has wrong shapes, e.g. {name}")


class Planted:
    """Unpickling this calls ``open(marker, "w")``: code running at load time."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_loaded(capsys, interrupted_run, finished_run, tmp_path):
    folder = interrupted_run / "checkpoints" / checkpoint_names(interrupted_run)[0]
    marker = tmp_path / "planted-code-ran"
    torch.save(Planted(marker), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False).close()  # the plant is live: a plain load runs it
    assert marker.exists()
    marker.unlink()
    torch.save(Planted(marker), folder / "optimizer.pt")
    rehash(folder)  # only weights_only=True stands between the file and the code
    refusal = "optimizer.pt holds pickled objects, which tunelab never loads"
    resume_past_newest(capsys, interrupted_run, finished_run, refusal)
    assert not marker.exists()


def test_when_every_checkpoint_is_refused_resume_asks_for_restart_which_then_matches(
    capsys, interrupted_run, finished_run
):
    names = checkpoint_names(interrupted_run)
    for folder in complete_checkpoints(interrupted_run / "checkpoints"):
        (folder / "manifest.json").unlink()
    before = {path: path.read_bytes() for path in interrupted_run.rglob("*") if path.is_file()}
    code, err = run_cli(capsys, "train", "--resume", interrupted_run, "-q")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"every checkpoint of {interrupted_run} was refused" in err
    for name in names:
        assert f"checkpoint {name} refused: its manifest is missing or damaged" in err
    assert f"tunelab train --resume {interrupted_run} --restart starts the run again from step 0" in err
    assert {path: path.read_bytes() for path in interrupted_run.rglob("*") if path.is_file()} == before

    code, err = run_cli(capsys, "train", "--resume", interrupted_run, "--restart", "-q")
    assert code == 0, err
    assert "resuming" not in err
    assert_same_run(interrupted_run, finished_run)


def test_resuming_with_an_edited_config_is_refused_naming_the_change(capsys, interrupted_run, finished_run):
    config_file = interrupted_run / "config.yaml"
    edited = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    edited["optim"]["lr"] = 0.5
    config_file.write_text(yaml.safe_dump(edited, sort_keys=False), encoding="utf-8")
    before = {path: path.read_bytes() for path in interrupted_run.rglob("*") if path.is_file()}
    code, err = run_cli(capsys, "train", "--resume", interrupted_run, "-q")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{config_file} was edited after its checkpoints were written (optim.lr: 0.003 -> 0.5)" in err
    assert f"tunelab train --resume {interrupted_run} --restart" in err
    assert {path: path.read_bytes() for path in interrupted_run.rglob("*") if path.is_file()} == before

    code, err = run_cli(capsys, "train", "--resume", interrupted_run, "--restart", "-q")
    assert code == 0, err  # the edit now applies from step 0: a different run
    assert results_of(interrupted_run)["steps"] == 2 * STEPS_PER_EPOCH
    assert (interrupted_run / "model" / "model.safetensors").read_bytes() != (
        finished_run / "model" / "model.safetensors"
    ).read_bytes()


def test_restart_goes_only_with_resume(capsys, tmp_path):
    code, err = run_cli(capsys, "train", write_yaml(tmp_path / "run.yaml", FINISHED_CONFIG), "--restart")
    assert code == 2 and "train --restart goes with --resume RUN_DIR" in err


def test_killed_during_the_final_evaluation_resumes_to_the_same_results(capsys, interrupted_run, finished_run):
    code, err = run_cli(capsys, "train", "--resume", interrupted_run, "-q")
    assert code == 0, err
    assert f"resuming from step-{2 * STEPS_PER_EPOCH:06d}" in one_line(err) and "refused" not in err
    for path in ("model/model.safetensors", "metrics.jsonl"):
        assert (interrupted_run / path).read_bytes() == (finished_run / path).read_bytes(), path
    expected, got = results_of(finished_run), results_of(interrupted_run)
    assert {key: got[key] for key in ("base", "final", "steps", "best")} == {
        key: expected[key] for key in ("base", "final", "steps", "best")
    }


def test_keep_checkpoints_keeps_the_newest_and_the_best(finished_run):
    # Which step is best depends on the run (another CPU's kernels can move it by a step or two), so
    # the rule is checked as it applies; the pruning of an older best is pinned by the next test.
    best = f"step-{results_of(finished_run)['best']['step']:06d}"
    newest = [f"step-{step:06d}" for step in range(2 * STEPS_PER_EPOCH, 0, -3)][:3]
    assert checkpoint_names(finished_run) == newest + ([] if best in newest else [best])
    for folder in complete_checkpoints(finished_run / "checkpoints"):
        verify(folder)
    assert partial_folders(finished_run) == []


def test_pruning_keeps_an_older_best_checkpoint_beside_the_newest_few(tmp_path):
    for step in range(3, 31, 3):
        (tmp_path / f"step-{step:06d}").mkdir()
    metrics = tmp_path / "metrics.jsonl"
    keeper = checkpoint_module.Checkpointer(tmp_path, 3, 3, None, None, None, None, {}, metrics, dict)
    keeper._prune(TrainState(total_steps=30, steps_per_epoch=15, step=30, best_step=6))
    assert checkpoint_names_in(tmp_path) == ["step-000030", "step-000027", "step-000024", "step-000006"]
    keeper._prune(TrainState(total_steps=30, steps_per_epoch=15, step=30, best_step=27))
    assert checkpoint_names_in(tmp_path) == ["step-000030", "step-000027", "step-000024"]


# -- non-finite steps ------------------------------------------------------------------------------


def poison(monkeypatch, how) -> None:
    """Make the training loss inf on the calls (1-based) for which ``how(call)`` names a way:
    "input" puts an inf pixel in the batch, so the forward pass itself overflows (BatchNorm
    statistics included); "loss" multiplies a finite loss by inf."""
    calls = []
    original = TrainingLoss.__call__

    def loss(self, model, batch):
        calls.append(len(calls) + 1)
        way = how(calls[-1])
        if way == "input":
            batch = batch | {"pixel_values": batch["pixel_values"].clone()}
            batch["pixel_values"][0, 0, 0, 0] = math.inf
        value = original(self, model, batch)
        return value * math.inf if way == "loss" else value

    monkeypatch.setattr(TrainingLoss, "__call__", loss)


def poison_and_record(monkeypatch, how) -> list[float]:
    """``poison``, and the loss of every call (1-based, as ``how`` counts them) in the list returned."""
    poison(monkeypatch, how)
    poisoned, losses = TrainingLoss.__call__, []

    def recorded(self, model, batch):
        loss = poisoned(self, model, batch)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(TrainingLoss, "__call__", recorded)
    return losses


def test_a_batch_that_gives_inf_is_skipped_and_counted(capsys, monkeypatch, tmp_path):
    poison(monkeypatch, {3: "input", 7: "loss"}.get)
    config = write_yaml(tmp_path / "run.yaml", cnn_config(epochs=1, checkpoint_every=None))
    code, err = run_cli(capsys, "train", config, "-o", tmp_path / "run", "-q")
    assert code == 0, err
    results = results_of(tmp_path / "run")
    assert (results["skipped_steps"], results["diverged"], results["steps"]) == (2, False, STEPS_PER_EPOCH - 2)
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(record["loss"]) for record in logged)


def test_the_logged_loss_is_the_mean_over_the_steps_taken(capsys, monkeypatch, tmp_path):
    """Two of 15 steps are skipped, so the run never reaches its 15th step: the losses of the 13
    taken are still logged, once the run ends, and the skipped steps' are not among them."""
    losses = poison_and_record(monkeypatch, {3: "input", 7: "loss"}.get)
    config = cnn_config(epochs=1, checkpoint_every=None, log_every=STEPS_PER_EPOCH, eval_every="epoch")
    code, err = run_cli(capsys, "train", write_yaml(tmp_path / "run.yaml", config), "-o", tmp_path / "run", "-q")
    assert code == 0, err
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    [line] = [record for record in logged if record["type"] == "train"]
    taken = [value for call, value in enumerate(losses, 1) if call not in (3, 7)]
    assert len(losses) == STEPS_PER_EPOCH and line["step"] == len(taken) == STEPS_PER_EPOCH - 2
    assert line["loss"] == pytest.approx(sum(taken) / len(taken), rel=1e-5)


def test_too_many_non_finite_steps_stop_the_run_keeping_the_last_good_weights(capsys, monkeypatch, tmp_path):
    good = 7
    poison(monkeypatch, lambda call: "input" if call > good else None)
    config = cnn_config(checkpoint_every=1, max_bad_steps=3, load_best_at_end=False)
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, "train", write_yaml(tmp_path / "run.yaml", config), "-o", run_dir, "-q")
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "3 optimizer steps in a row had non-finite gradients" in lines[0]
    results = results_of(run_dir)
    assert (results["diverged"], results["skipped_steps"], results["steps"]) == (True, 3, good)
    assert checkpoint_names(run_dir)[0] == f"step-{good:06d}"
    last_good = load_file(run_dir / "checkpoints" / f"step-{good:06d}" / "model.safetensors")
    saved = load_file(run_dir / "model" / "model.safetensors")
    assert saved.keys() == last_good.keys()
    for name, tensor in saved.items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, last_good[name]), name


def test_skipping_on_the_device_trains_exactly_as_reading_the_norm_does_when_nothing_overflows(capsys, tmp_path):
    for check in ("host", "device"):
        config = write_yaml(tmp_path / f"{check}.yaml", cnn_config(epochs=1, log_every=1, nonfinite_check=check))
        code, err = run_cli(capsys, "train", config, "-o", tmp_path / check, "-q")
        assert code == 0, err
    for name in ("model/model.safetensors", "metrics.jsonl"):
        assert (tmp_path / "device" / name).read_bytes() == (tmp_path / "host" / name).read_bytes(), name


def test_on_the_device_a_skipped_step_changes_nothing_but_keeps_its_place_in_the_schedule(
    capsys, monkeypatch, tmp_path
):
    losses = poison_and_record(monkeypatch, {3: "input", 7: "loss"}.get)
    config = cnn_config(epochs=1, checkpoint_every=None, log_every=STEPS_PER_EPOCH, nonfinite_check="device")
    code, err = run_cli(capsys, "train", write_yaml(tmp_path / "run.yaml", config), "-o", tmp_path / "run", "-q")
    assert code == 0, err
    results = results_of(tmp_path / "run")
    assert (results["skipped_steps"], results["diverged"], results["steps"]) == (2, False, STEPS_PER_EPOCH)
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")  # batch-norm statistics included
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    [line] = [record for record in logged if record["type"] == "train"]
    taken = [value for call, value in enumerate(losses, 1) if call not in (3, 7)]
    assert line["step"] == STEPS_PER_EPOCH and line["loss"] == pytest.approx(sum(taken) / len(taken), rel=1e-5)


def test_on_the_device_too_many_non_finite_steps_stop_the_run_with_the_last_good_weights(capsys, monkeypatch, tmp_path):
    good = 7
    poison(monkeypatch, lambda call: "input" if call > good else None)
    config = cnn_config(checkpoint_every=1, max_bad_steps=3, load_best_at_end=False, nonfinite_check="device")
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, "train", write_yaml(tmp_path / "run.yaml", config), "-o", run_dir, "-q")
    assert code == 1 and "3 optimizer steps in a row had non-finite gradients" in err, err
    results = results_of(run_dir)
    # Settled at each checkpoint here: it stops at the third bad step, which kept its place, and
    # wrote no checkpoint amid them (two are kept: the good one is still among them).
    assert (results["diverged"], results["skipped_steps"], results["steps"]) == (True, 3, good + 3)
    assert checkpoint_names(run_dir)[0] == f"step-{good:06d}"
    last_good = load_file(run_dir / "checkpoints" / f"step-{good:06d}" / "model.safetensors")
    saved = load_file(run_dir / "model" / "model.safetensors")
    assert saved.keys() == last_good.keys()
    assert all(torch.equal(tensor, last_good[name]) for name, tensor in saved.items())


def test_device_skips_apply_only_where_the_optimizer_can_skip_and_carry_a_run_of_bad_steps_over():
    from types import SimpleNamespace

    from tunelab.engine.callbacks import TrainState
    from tunelab.engine.device_skips import DeviceSkips, skips_on_device

    def accelerator(device="cpu", scaler=None, kind="NO"):
        return SimpleNamespace(device=torch.device(device), scaler=scaler, distributed_type=SimpleNamespace(name=kind))

    weights = [torch.nn.Parameter(torch.ones(2))]
    fused, unfused = torch.optim.AdamW(weights, fused=True), torch.optim.RMSprop(weights)
    assert skips_on_device("device", accelerator(), fused) and not skips_on_device("auto", accelerator(), fused)
    assert not skips_on_device("device", accelerator(), unfused)  # no found_inf to hand it
    assert not skips_on_device("device", accelerator(scaler=object()), fused)  # fp16's scaler skips itself
    assert not skips_on_device("device", accelerator(kind="FSDP"), fused)  # a sharded norm
    assert not skips_on_device("host", accelerator(), fused)
    skips, state = DeviceSkips(torch.device("cpu"), consecutive=2), TrainState(total_steps=10, steps_per_epoch=10)
    weights[0].grad = torch.full((2,), math.nan)
    found = skips.step(fused, torch.linalg.vector_norm(weights[0].grad))
    loss = skips.record(found, 1, torch.tensor(math.nan), [], [])
    assert torch.equal(weights[0].detach(), torch.ones(2)) and loss.item() == 0.0
    state.running_count = 1
    skips.settle(state, max_bad_steps=3)  # two before a resume and one after: three in a row
    assert (state.skipped_steps, state.running_count, state.consecutive_skips, state.diverged) == (1, 0, 3, True)


# -- a full disk -----------------------------------------------------------------------------------


def fail_write(monkeypatch, failing_call: int, where: str, code: int = errno.ENOSPC) -> None:
    """``save_model`` in the checkpoint module fails with ``code`` (ENOSPC: the disk is full) on its
    ``failing_call``-th write to a path containing ``where``, leaving part of the file behind."""
    calls = []
    original = checkpoint_module.save_model

    def save_model(model, filename, *args, **kwargs):
        if where in filename:
            calls.append(filename)
            if len(calls) == failing_call:
                Path(filename).write_bytes(b"\0" * 10)
                raise OSError(code, os.strerror(code), filename)
        return original(model, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_model", save_model)


@pytest.mark.parametrize(
    ("error_code", "reason"),
    [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")],
)
def test_an_unwritable_checkpoint_is_one_line_and_the_previous_one_is_kept(
    capsys, monkeypatch, tmp_path, finished_run, error_code, reason
):
    fail_write(monkeypatch, 2, ".partial", error_code)
    config = write_yaml(tmp_path / "run.yaml", FINISHED_CONFIG)
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, "train", config, "-o", run_dir, "-q")
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert f"cannot write checkpoint {run_dir / 'checkpoints' / 'step-000006'}: {reason}" in err
    assert f"step-000003 is intact: free space, then tunelab train --resume {run_dir}" in err
    assert checkpoint_names(run_dir) == ["step-000003"]
    verify(run_dir / "checkpoints" / "step-000003")
    assert partial_folders(run_dir) == []
    assert not (run_dir / "results.json").exists()

    monkeypatch.undo()  # space freed: the run goes on from its last checkpoint
    code, err = run_cli(capsys, "train", "--resume", run_dir, "-q")
    assert code == 0, err
    assert "resuming from step-000003 (step 3)" in one_line(err)
    assert_same_run(run_dir, finished_run)


def assert_same_run(run_dir: Path, finished_run: Path) -> None:
    for path in ("model/model.safetensors", "metrics.jsonl"):
        assert (run_dir / path).read_bytes() == (finished_run / path).read_bytes(), path
    assert results_of(run_dir)["final"] == results_of(finished_run)["final"]


TMPFS_RUN = """
set -e
mount -t tmpfs -o size={size}k tmpfs {disk}
"$PYTHON" -m tunelab train {config} -o {disk}/run -q 2> {logs}/full.err || echo $? > {logs}/full.rc
cp -r {disk}/run {logs}/at-failure
mount -o remount,size=65536k {disk}
"$PYTHON" -m tunelab train --resume {disk}/run -q 2> {logs}/resumed.err
cp -r {disk}/run {logs}/resumed
"""


def test_a_real_full_disk_stops_the_run_and_the_newest_checkpoint_resumes_bit_identically(finished_run, tmp_path):
    """A tmpfs too small for the run (in a private mount namespace: no root needed where user
    namespaces are allowed), then grown once the run has stopped."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("no user namespaces here to mount a small tmpfs in; the injected failures above stand in")
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir(), logs.mkdir()
    config = write_yaml(tmp_path / "run.yaml", FINISHED_CONFIG)
    script = TMPFS_RUN.format(size=1600, disk=disk, config=config, logs=logs)
    environment = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # as in-process tests run
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=environment,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    err = (logs / "full.err").read_text()
    assert (logs / "full.rc").read_text().strip() == "2", err
    assert len(err.splitlines()) == 1 and err.startswith("error: output: cannot write"), err
    assert "the disk is full" in err and "Traceback" not in err
    newest = checkpoint_names(logs / "at-failure")[0]
    assert f"{newest} is intact: free space, then tunelab train --resume {disk / 'run'}" in err
    verify(logs / "at-failure" / "checkpoints" / newest)
    assert partial_folders(logs / "at-failure") == []
    assert f"resuming from {newest}" in one_line((logs / "resumed.err").read_text())
    assert_same_run(logs / "resumed", finished_run)


def test_a_full_disk_while_saving_the_best_weights_is_one_line(capsys, monkeypatch, tmp_path):
    fail_write(monkeypatch, 2, "best")
    config = write_yaml(tmp_path / "run.yaml", cnn_config(metric="loss"))
    code, err = run_cli(capsys, "train", config, "-o", tmp_path / "run", "-q")
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "the disk is full" in err and "best" in err
    best = tmp_path / "run" / "checkpoints" / "best"
    assert sorted(path.name for path in best.iterdir()) == ["info.json", "model.safetensors"]
    assert load_file(best / "model.safetensors")  # the first best weights, whole
    for folder in complete_checkpoints(tmp_path / "run" / "checkpoints"):
        verify(folder)


def test_verify_names_what_is_wrong(finished_run, tmp_path):
    folder = shutil.copytree(complete_checkpoints(finished_run / "checkpoints")[0], tmp_path / "step-000030")
    (folder / "state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CorruptCheckpoint, match="state.json does not match its recorded hash"):
        verify(folder)


# -- Ctrl-C ----------------------------------------------------------------------------------------


def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_the_resumed_run_is_bit_identical(capsys, tmp_path):
    config = write_yaml(tmp_path / "run.yaml", cnn_config(epochs=6, checkpoint_every=None, log_every=1))
    code, err = run_cli(capsys, "train", config, "-o", tmp_path / "whole", "-q")
    assert code == 0, err
    run_dir = tmp_path / "run"
    environment = os.environ | {"OMP_NUM_THREADS": "1"}  # as the in-process run above
    log = tmp_path / "interrupted.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(config), "-o", str(run_dir), "-q"],
                                   stderr=stderr, stdout=subprocess.DEVNULL, env=environment)  # fmt: skip
    try:
        wait_for(process, lambda: last_logged_step(run_dir, 0) >= STEPS_PER_EPOCH + 4, "step 19", log, timeout=120)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    last = log.read_text().strip().splitlines()[-1]
    [name] = checkpoint_names(run_dir)  # checkpoint_every is off: this one is the interrupt's
    step = int(name.split("-")[1])
    assert step < 6 * STEPS_PER_EPOCH, "the run ended before it was interrupted"
    resume = f"resume with tunelab train --resume {run_dir}"
    assert last == f"interrupted at step {step}; checkpoint saved ({name}); {resume}"
    code, err = run_cli(capsys, "train", "--resume", run_dir, "-q")
    assert code == 0, err
    assert f"resuming from {name} (step {step})" in one_line(err)
    assert_same_run(run_dir, tmp_path / "whole")


def test_a_second_ctrl_c_stops_at_once_and_other_callers_keep_the_usual_handler():
    from tunelab.engine.interrupt import stopping_at_step_boundary

    for processes in (0, 2):  # tune, demo and distill runs (0), or several processes: Python's own handler
        with stopping_at_step_boundary(None, 10, processes) as callbacks:
            assert callbacks == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with stopping_at_step_boundary(None, 10, 1) as [callback]:
        callback.ask(signal.SIGINT, None)  # the first asks, and returns
        assert callback.requested
        with pytest.raises(KeyboardInterrupt):
            callback.ask(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
