"""Progressive unfreezing: the schedule, resume in the middle of it, and its claims."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tunelab.builder import run_training
from tunelab.cli import main
from tunelab.config import validate
from tunelab.rundir import CHECKPOINTS, MODEL, RESULTS, prepare_run_dir


def progressive_config(text_config: dict, **train) -> dict:
    return text_config | {
        "strategy": {"name": "progressive", "progressive": {"unit": "step", "every": 2}},
        "optim": {"lr": 1e-2},
        "evaluate": {"base": False},
        "train": text_config["train"] | {"load_best_at_end": False, "checkpoint_every": None} | train,
    }


def changed_groups(tiny_bert, run_dir) -> dict[str, bool]:
    initial = {f"bert.{name}": value for name, value in load_file(tiny_bert / "model.safetensors").items()}
    tuned = load_file(run_dir / MODEL / "model.safetensors")

    def moved(prefix: str) -> bool:
        names = [n for n in initial if n.startswith(prefix) and not n.endswith("key.bias")]
        changed = [not torch.equal(tuned[n], initial[n]) for n in names]
        assert all(changed) or not any(changed), f"{prefix}: only some weights moved"
        return all(changed)

    return {
        prefix: moved(prefix)
        for prefix in ("bert.pooler.", "bert.encoder.layer.1.", "bert.encoder.layer.0.", "bert.embeddings.")
    }


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (2, {"bert.pooler.": True, "bert.encoder.layer.1.": False, "bert.encoder.layer.0.": False}),
        (4, {"bert.pooler.": True, "bert.encoder.layer.1.": True, "bert.encoder.layer.0.": False}),
        (6, {"bert.pooler.": True, "bert.encoder.layer.1.": True, "bert.encoder.layer.0.": True}),
    ],
)
def test_blocks_unfreeze_from_the_top_on_schedule(steps, expected, text_config, tiny_bert, tmp_path):
    config = progressive_config(text_config, max_steps=steps)
    results = run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    moved = changed_groups(tiny_bert, tmp_path / "run")
    assert {key: moved[key] for key in expected} == expected
    assert moved["bert.embeddings."] is False  # the last stage (from step 7) was never reached
    details = results["strategy_details"]
    assert details["stages"] == 4 and details["stage"] == (steps - 1) // 2
    by_stage = details["trainable_by_stage"]
    assert by_stage == sorted(by_stage) and by_stage[-1] == results["parameters"]["total"]
    assert results["parameters"]["trainable"] == results["parameters"]["total"]


def test_max_blocks_stops_unfreezing_and_groups_set_the_order(text_config, tiny_bert, tmp_path):
    limited = progressive_config(text_config, max_steps=12)
    limited["strategy"]["progressive"]["max_blocks"] = 1
    results = run_training(validate(limited), prepare_run_dir(tmp_path / "limited", False), progress=False)
    moved = changed_groups(tiny_bert, tmp_path / "limited")
    assert moved == {
        "bert.pooler.": True,
        "bert.encoder.layer.1.": True,
        "bert.encoder.layer.0.": False,
        "bert.embeddings.": False,
    }
    assert results["parameters"]["trainable"] < results["parameters"]["total"]

    ordered = progressive_config(text_config, max_steps=4)
    ordered["strategy"]["progressive"]["groups"] = [["bert.embeddings*"], ["bert.encoder*"]]
    run_training(validate(ordered), prepare_run_dir(tmp_path / "ordered", False), progress=False)
    moved = changed_groups(tiny_bert, tmp_path / "ordered")
    assert moved["bert.embeddings."] and not moved["bert.encoder.layer.1."]


@pytest.mark.parametrize(
    ("unit", "every", "keep_up_to"),
    [("step", 3, "step-000004"), ("epoch", 1, "step-000010")],  # 8 steps an epoch: step 10 is mid-epoch
    ids=["step-schedule", "epoch-schedule-mid-epoch"],
)
def test_a_resumed_progressive_run_ends_with_the_same_weights(unit, every, keep_up_to, text_config, tmp_path, capsys):
    config = progressive_config(text_config, epochs=4, checkpoint_every=2, keep_checkpoints=20, eval_every=4)
    config["strategy"]["progressive"] = {"unit": unit, "every": every}
    config["model"] = config["model"] | {"dropout": 0.1}  # dropout draws random numbers: resume must restore them
    finished = tmp_path / "finished"
    results = run_training(validate(config), prepare_run_dir(finished, False), progress=False)
    assert results["strategy_details"]["stage"] == 3

    # The run as a kill would leave it after the checkpoint `keep_up_to`, with stages still to come.
    interrupted = shutil.copytree(finished, tmp_path / "interrupted")
    for name in ("results.json", "report.html"):
        (interrupted / name).unlink()
    shutil.rmtree(interrupted / MODEL)
    for folder in (interrupted / CHECKPOINTS).glob("step-*"):
        if folder.name > keep_up_to:
            shutil.rmtree(folder)
    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {keep_up_to}" in err and "refused" not in err, err

    weights = "model/model.safetensors"
    assert (interrupted / weights).read_bytes() == (finished / weights).read_bytes()
    assert (interrupted / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()
    resumed = json.loads((interrupted / RESULTS).read_text())
    assert resumed["final"] == results["final"]
    assert resumed["strategy_details"] == results["strategy_details"]
