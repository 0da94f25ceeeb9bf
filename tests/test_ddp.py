"""Two-process data parallel training on CPU (torchrun, gloo) matches one process.

``train.batch_size`` is the global batch (the Accelerator splits each batch across processes),
so with dropout off, two processes see the same examples per optimizer step as one process and
DDP's gradient all-reduce (a mean over two half-batch means) equals the one-process gradient up
to floating-point noise. The training set (64) and validation/test sets (32) divide evenly by the
batch sizes, so no process pads or repeats examples.

``accelerate launch --cpu --num_processes 2`` is not used: without an MPI launcher it starts a
single process. torchrun starts the two and Accelerate picks them up (MULTI_CPU, gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.rundir import METRICS, MODEL, RESULTS

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
LAUNCH_TIMEOUT = 300  # a hang (a collective waiting on a process that went another way) fails, not blocks


@pytest.fixture(params=["auto", "device"])
def ddp_config(text_config, write_config, request):
    """Non-finite steps checked on the host (auto, on a CPU) and on the device, where each
    process settles its own counts (the all-reduced norm makes them agree)."""
    train = {"epochs": 10, "batch_size": 8, "eval_batch_size": 16, "log_every": 2, "nonfinite_check": request.param}
    config = text_config | {
        "model": text_config["model"] | {"dropout": 0.0},
        "optim": {"lr": 3e-3},
        # Evaluating every epoch also exercises the best-weights checkpoint (written by rank 0,
        # read back by every rank at the end).
        "train": text_config["train"] | train,
    }
    return write_config(config)


def _launch(prefix: list[str], config, run_dir, tmp_path, program=("-m", "tunelab")) -> subprocess.CompletedProcess:
    launcher_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in launcher_keys}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TUNELAB_CACHE": str(tmp_path / "cache"),
    }
    command = [*prefix, *program, "train", str(config), "--output", str(run_dir), "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_two_processes_match_one(ddp_config, tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single = _launch([sys.executable], ddp_config, single_dir, tmp_path)
    ddp = _launch(TORCHRUN, ddp_config, ddp_dir, tmp_path)

    # Only rank 0 prints: stdout is exactly one JSON document; rank 1 adds nothing to stderr.
    printed = json.loads(ddp.stdout)
    assert printed["processes"] == 2
    assert "Traceback" not in ddp.stderr and "error:" not in ddp.stderr
    assert json.loads(single.stdout)["processes"] == 1

    one = json.loads((single_dir / RESULTS).read_text())
    two = json.loads((ddp_dir / RESULTS).read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["steps"] == two["steps"] == 10 * 64 // 8
    assert one["examples"] == two["examples"]
    assert one["best"]["step"] == two["best"]["step"]
    assert one["final"]["validation"]["accuracy"] > 0.6  # it learned: the comparison is not of two idle models
    for split in ("validation", "test", "train"):
        assert two["final"][split]["examples"] == one["final"][split]["examples"]
        for metric in ("loss", "accuracy", "f1", "auc"):
            assert two["final"][split][metric] == pytest.approx(one["final"][split][metric], abs=1e-4), (split, metric)

    # Rank 0 alone writes the logs: the same records (no line twice), with losses equal up to noise.
    lines_one = [json.loads(line) for line in (single_dir / METRICS).read_text().splitlines()]
    lines_two = [json.loads(line) for line in (ddp_dir / METRICS).read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in lines_two] == [(r["type"], r["step"]) for r in lines_one]
    for a, b in zip(lines_one, lines_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    assert not [p for p in ddp_dir.rglob("*") if p.name.endswith((".tmp", ".partial"))]

    weights_one = load_file(single_dir / MODEL / "model.safetensors")
    weights_two = load_file(ddp_dir / MODEL / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_one.items():
        # Attention key biases get an exactly-zero gradient in exact arithmetic (softmax ignores a
        # shift shared by all keys); Adam divides their rounding noise by its own square root, so
        # the two runs' noise grows to ~1e-4 there. Every other weight agrees to ~1e-6.
        tolerance = 1e-3 if name.endswith("attention.self.key.bias") else 2e-5
        torch.testing.assert_close(weights_two[name], value, atol=tolerance, rtol=0, msg=name)


def test_two_processes_build_the_cached_pretrained_cnn(write_config, tmp_path):
    """First use of ``digits-cnn`` trains it in a nested run. Under torchrun each process used to
    stage that run in a folder named after its own pid, so rank 1 looked for the best checkpoint
    in an empty folder and crashed; now all use the main process's folder."""
    config = write_config(
        {
            "task": "image-classification",
            "seed": 0,
            "model": {"source": "digits-cnn"},
            "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_train_per_class": 16},
            "train": {"epochs": 2, "batch_size": 8, "grad_accum_steps": 2},
        }
    )
    # The built-in's quality is not the point here: pretrain it for one epoch, not fifteen.
    program = tmp_path / "tunelab_quick_pretrain.py"
    program.write_text(
        "import sys\n"
        "from tunelab.models import builtin\n"
        "builtin.PRETRAIN_CONFIG['train'] |= {'epochs': 1}\n"
        "builtin.PRETRAIN_CONFIG['data'] |= {'digits_train_per_class': 8}\n"
        "from tunelab.cli import main\n"
        "sys.exit(main())\n"
    )
    ddp = _launch(TORCHRUN, config, tmp_path / "ddp", tmp_path, program=(str(program),))
    results = json.loads(ddp.stdout)
    assert results["processes"] == 2
    assert (results["steps"], results["epochs_completed"]) == (2 * 80 // 16, 2)
    cache = tmp_path / "cache"
    left = [path for path in cache.rglob(".*")]
    assert not left, left  # no staging folder (nor a half-written measurement) left behind
    assert sorted(path.name for path in cache.iterdir()) == ["digits-cnn-0-4-dihedral", "measured"]
    assert (cache / "digits-cnn-0-4-dihedral" / "model" / "model.safetensors").exists()


def test_only_the_main_process_prepares_the_run_directory(text_config, write_config, tmp_path, monkeypatch):
    """Every torchrun process runs ``cmd_train``; a second one checking, clearing (--overwrite) and
    creating the directory at the same time as rank 0 raced it (each deleting the other's files)."""
    from types import SimpleNamespace

    import tunelab.builder.fresh
    import tunelab.cli
    import tunelab.commands.train

    run_dir = tmp_path / "existing"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("kept\n")
    (run_dir / "results.json").write_text("{}\n")
    seen = []
    monkeypatch.setattr(tunelab.commands.train, "is_main_process", lambda: False)
    monkeypatch.setattr(tunelab.builder.fresh, "process_state", lambda: SimpleNamespace(is_main_process=False))
    monkeypatch.setattr(tunelab.builder.fresh, "run_training", lambda _, folder, *a, **k: seen.append(folder) or {})
    config = write_config(text_config)
    assert tunelab.cli.main(["train", str(config), "--output", str(run_dir), "--overwrite", "--quiet"]) == 0
    assert seen == [run_dir]
    assert (run_dir / "config.yaml").read_text() == "kept\n"  # not cleared by a non-main process


def test_two_process_run_killed_and_resumed_equals_uninterrupted(tmp_path, write_config):
    """kill -9 on both processes mid-run, then ``torchrun ... train --resume``: per-process RNG,
    the split position inside the epoch and the optimizer come back, so the result is bit-identical."""
    import signal
    import time

    import psutil

    config = write_config(
        {
            "task": "image-classification",
            "seed": 3,
            "model": {"source": "cnn"},
            "data": {"train": "digits", "digits_classes": [0, 1, 2], "digits_train_per_class": 40},
            "optim": {"lr": 3e-3},
            "strategy": {"freeze_norm_stats": True},
            "train": {"epochs": 4, "batch_size": 8, "checkpoint_every": 3, "log_every": 4, "eval_every": 5},
        }
    )
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TUNELAB_CACHE": str(tmp_path / "cache")}
    train = [*TORCHRUN, "-m", "tunelab", "train", "--quiet"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(
        [*train, str(config), "-o", str(whole)], env=env, check=True, timeout=LAUNCH_TIMEOUT, capture_output=True
    )

    run = subprocess.Popen(
        [*train, str(config), "-o", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while len(list((killed / "checkpoints").glob("step-*"))) < 2 and run.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    launcher = psutil.Process(run.pid)
    for process in [*launcher.children(recursive=True), launcher]:  # torchrun and both workers, at once
        process.send_signal(signal.SIGKILL)
    run.wait()
    assert not (killed / RESULTS).exists(), "the run finished before it could be killed"

    resumed = subprocess.run(
        [*train, "--resume", str(killed)], env=env, timeout=LAUNCH_TIMEOUT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (whole / MODEL / "model.safetensors").read_bytes() == (killed / MODEL / "model.safetensors").read_bytes()
    # Logged losses too: each process's unlogged loss at the checkpoint (steps 5-6 here, logged at 8) is its own.
    assert (whole / METRICS).read_text().splitlines() == (killed / METRICS).read_text().splitlines()
    assert json.loads((whole / RESULTS).read_text())["final"] == json.loads((killed / RESULTS).read_text())["final"]


def test_progressive_unfreezing_under_two_processes_matches_one(text_config, write_config, tmp_path):
    """DDP only synchronises parameters that required gradients when it was built; blocks unfrozen
    later must still be averaged across processes, and every process must agree on the stage."""
    config = text_config | {
        "model": text_config["model"] | {"dropout": 0.0},
        "optim": {"lr": 3e-3},
        "strategy": {"name": "progressive", "progressive": {"unit": "step", "every": 3}},
        "train": text_config["train"] | {"epochs": 2, "batch_size": 8, "log_every": 2, "load_best_at_end": False},
    }
    path = write_config(config)
    single = json.loads(_launch([sys.executable], path, tmp_path / "single", tmp_path).stdout)
    ddp = json.loads(_launch(TORCHRUN, path, tmp_path / "ddp", tmp_path).stdout)
    assert (single["processes"], ddp["processes"]) == (1, 2)
    assert single["strategy_details"] == ddp["strategy_details"] and ddp["strategy_details"]["stage"] == 3
    for split in ("validation", "test"):
        for metric in ("loss", "accuracy"):
            assert ddp["final"][split][metric] == pytest.approx(single["final"][split][metric], abs=1e-4)
    one = load_file(tmp_path / "single" / MODEL / "model.safetensors")
    two = load_file(tmp_path / "ddp" / MODEL / "model.safetensors")
    for name, value in one.items():
        tolerance = 1e-3 if name.endswith("attention.self.key.bias") else 2e-5
        torch.testing.assert_close(two[name], value, atol=tolerance, rtol=0, msg=name)
    # Unfrozen late, yet trained identically: the embeddings moved, and by the same amount.
    initial = load_file(Path(text_config["model"]["source"]) / "model.safetensors")
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(two[embeddings], initial[embeddings.removeprefix("bert.")])


def test_two_process_tagger_scores_equal_a_one_process_evaluation_of_its_model(
    tiny_bert, tmp_path, write_config, capsys
):
    """Token outputs differ in length from process to process: they are padded before the
    gather, and the scores of the two-process run equal one process's evaluation of its model."""
    from test_token_classification import ner_config, tagged_sentences, write_conll
    from tunelab.recipes.evaluate import run_evaluation

    files = {
        "train": write_conll(tmp_path / "train.txt", tagged_sentences(64, 1)),
        "validation": write_conll(tmp_path / "dev.txt", tagged_sentences(37, 2)),  # odd: one process pads
    }
    config = write_config(ner_config(tiny_bert, files, train={"epochs": 2, "batch_size": 8, "eval_batch_size": 8}))
    ddp_dir = tmp_path / "ddp"
    _launch(TORCHRUN, config, ddp_dir, tmp_path)
    two = json.loads((ddp_dir / RESULTS).read_text())
    assert two["processes"] == 2 and two["final"]["validation"]["examples"] == 37
    scores, _ = run_evaluation(ddp_dir)
    for metric in ("loss", "precision", "recall", "f1", "token_accuracy"):
        assert scores["validation"][metric] == pytest.approx(two["final"]["validation"][metric], abs=1e-6)
    assert scores["validation"]["per_type"] == two["final"]["validation"]["per_type"]
