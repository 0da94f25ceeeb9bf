"""A new task, a new strategy and a new command, defined in this module and registered from it (the
command through an entry point, as an installed package names it): no file under ``src/``
changes for any of them. A config's ``plugins: [test_plugins]`` imports this module in every
process of a run (``compare`` trains each strategy in a process of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from safetensors.torch import load_file
from sklearn.datasets import load_digits

import tunelab.commands
from tunelab.cli import build_parser, main
from tunelab.commands.base import Command, common, stdout
from tunelab.config import Section
from tunelab.data.labels import LabelMap
from tunelab.models.builtin import digits_cnn_folder
from tunelab.strategies import Strategy, register_strategy
from tunelab.strategies.anatomy import anatomy
from tunelab.tasks import Task, register_task

HERE = Path(__file__).parent


class TopBlocksSettings(Section):
    blocks: int = Field(1, ge=1, description="how many of the last blocks train, besides the head")


class TopBlocks(Strategy):
    """Trains the head and the last ``blocks`` blocks; everything below keeps its pretrained weights."""

    name = "top-blocks"
    rate_factor = 2.0
    compared_by_default = False
    section = TopBlocksSettings

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        parts, count = anatomy(model), self.config.section(self.name).blocks
        trained = tuple(f"{name}." for name in [*parts.head, *parts.blocks[-count:]])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(trained))
        return model

    def describe(self, model: torch.nn.Module) -> dict:
        return {"blocks": self.config.section(self.name).blocks}


class MarginClassification(Task):
    """Classes learned with the multi-class hinge loss of a linear SVM, scored by accuracy and
    by the margin between the true class and the strongest other one."""

    name = "margin-classification"
    metrics = ("loss", "accuracy", "margin")
    default_metric = "margin"
    table_metrics = metrics
    curve_metrics = ("accuracy",)
    has_classes = True

    def reads(self, config) -> str:
        return "image"

    def targets(self, labels: list, config) -> LabelMap:
        return LabelMap.from_labels(labels)

    def saved_targets(self, meta: dict) -> LabelMap:
        return LabelMap(tuple(meta["labels"]))

    def loss(self, logits, labels, weights=None):
        return torch.nn.functional.multi_margin_loss(logits.float(), labels)

    def scores(self, logits, labels, targets, groups=None) -> dict:
        logits = logits.float()
        true = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.masked_fill(torch.nn.functional.one_hot(labels, len(targets)).bool(), -torch.inf)
        return {
            "loss": self.loss(logits, labels).item(),
            "accuracy": (logits.argmax(dim=-1) == labels).float().mean().item(),
            "margin": (true - others.max(dim=1).values).mean().item(),
            "examples": len(labels),
        }

    def predictions(self, logits, targets) -> list[dict]:
        return [{"label": targets.names[index]} for index in logits.argmax(dim=-1).tolist()]

    def report_sections(self, results: dict) -> list[str]:
        margin = results["final"]["validation"]["margin"]
        return [f"<h2>Margins</h2><p>mean validation margin {margin:.3f}</p>"]


register_task(MarginClassification())
register_strategy(TopBlocks)


def margin_arguments(parser) -> None:
    parser.add_argument("run_dir", help="a finished margin-classification run")
    common(parser)


def margins(args) -> dict:
    results = json.loads((Path(args.run_dir) / "results.json").read_text())
    found = {split: scores["margin"] for split, scores in results["final"].items()}
    if not args.json:
        stdout.print(", ".join(f"{split} margin {value:.3f}" for split, value in found.items()))
    return found


MARGINS = Command("margins", "the mean margin of each split of a finished run", margin_arguments, margins)


def plugin_config() -> dict:
    """Digits 5-9 on the demo CNN pretrained on 0-4: a few seconds a run, and it learns."""
    return {
        "task": "margin-classification",
        "plugins": ["test_plugins"],
        "seed": 0,
        "model": {"source": "digits-cnn"},
        "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_train_per_class": 30},
        "strategy": {"name": "top-blocks", "top-blocks": {"blocks": 1}},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": 4, "batch_size": 10, "checkpoint_every": None},
    }


def test_the_new_task_and_strategy_train_save_predict_and_report(write_config, tmp_path, capsys):
    assert main(["train", str(write_config(plugin_config())), "-o", str(tmp_path / "run"), "-q", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["task"] == "margin-classification" and results["strategy_details"] == {"blocks": 1}
    assert results["best"]["metric"] == "margin"  # the task's own default train.metric
    base, final = results["base"]["validation"], results["final"]["validation"]
    assert final["margin"] > base["margin"] + 1.0 and final["accuracy"] >= 0.8

    # What the strategy froze is the pretrained CNN's, bit for bit; the last block and the head moved.
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    pretrained = load_file(digits_cnn_folder() / "model.safetensors")
    for name, frozen in (("blocks.0.0.weight", True), ("blocks.1.0.weight", True), ("blocks.2.0.weight", False)):
        assert torch.equal(saved[name], pretrained[name]) == frozen, name
    assert "<h2>Margins</h2>" in (tmp_path / "run" / "report.html").read_text()

    image = tmp_path / "eight.png"
    Image.fromarray((load_digits().images[8] * 255 / 16).astype(np.uint8)).save(image)
    assert main(["predict", str(tmp_path / "run"), "--input", str(image), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) == {"input", "label"} and row["label"] in {"5", "6", "7", "8", "9"}


def test_compare_and_tune_run_the_plugins_in_their_own_processes(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # compare's processes import test_plugins like this one
    config = write_config(plugin_config())
    output = tmp_path / "compared"
    assert main(["compare", str(config), "--strategies", "top-blocks,full", "-o", str(output), "-q"]) == 0
    rows = {row["strategy"]: row for row in json.loads((output / "comparison.json").read_text())["rows"]}
    assert not any("error" in row for row in rows.values()), rows
    assert rows["top-blocks"]["trainable_percent"] < rows["full"]["trainable_percent"]
    assert rows["top-blocks"]["lr"] == 2 * rows["full"]["lr"]  # its own rate factor
    assert set(rows["full"]["validation"]) == {"loss", "accuracy", "margin"}

    tune = plugin_config() | {"tune": {"space": {"strategy.top-blocks.blocks": {"choices": [1, 2]}}}}
    assert (
        main(["tune", str(write_config(tune, "tune.yaml")), "--trials", "2", "-o", str(tmp_path / "tuned"), "-q"]) == 0
    )
    study = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    assert study["objectives"] == ["margin"] and study["directions"] == ["maximize"]
    for trial in study["trials"]:  # each trial ran the blocks it was given
        ran = json.loads((Path(trial["run_dir"]) / "results.json").read_text())
        assert ran["strategy_details"] == {"blocks": trial["params"]["strategy.top-blocks.blocks"]}


def test_a_plugin_section_is_checked_by_its_strategy(write_config, tmp_path, capsys):
    bad = plugin_config()
    bad["strategy"] = {"name": "top-blocks", "top-blocks": {"block": 1}}
    assert main(["train", str(write_config(bad)), "-o", str(tmp_path / "run"), "-q"]) == 2
    assert "unknown key 'strategy.top-blocks.block'; allowed here: blocks" in capsys.readouterr().err
    bad["strategy"] = {"name": "top-blocks", "top-blocks": {"blocks": 0}}
    assert main(["train", str(write_config(bad)), "-o", str(tmp_path / "run"), "-q"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'run.yaml'}: strategy.top-blocks.blocks: Input")
    bad["strategy"] = {"name": "full", "nothing": {}}
    assert main(["train", str(write_config(bad)), "-o", str(tmp_path / "run"), "-q"]) == 2
    assert "unknown key 'strategy.nothing'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_installed_package_adds_a_command_through_its_entry_point(write_config, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    package = site / "tunelab_margins-0.1.dist-info"
    package.mkdir(parents=True)
    (package / "METADATA").write_text("Metadata-Version: 2.1\nName: tunelab-margins\nVersion: 0.1\n")
    (package / "entry_points.txt").write_text("[tunelab.commands]\nmargins = test_plugins:MARGINS\n")
    assert main(["margins", "x"]) == 2  # not installed yet: argparse names the choices
    assert "invalid choice: 'margins'" in capsys.readouterr().err
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(tunelab.commands, "_COMMANDS", dict(tunelab.commands._COMMANDS))  # gone after the test

    config = plugin_config() | {"train": plugin_config()["train"] | {"epochs": 1}}
    assert main(["train", str(write_config(config)), "-o", str(tmp_path / "run"), "-q", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)["final"]
    assert main(["margins", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {split: scores["margin"] for split, scores in trained.items()}
    assert main(["margins", str(tmp_path / "run")]) == 0
    assert f"validation margin {trained['validation']['margin']:.3f}" in capsys.readouterr().out
    assert "the mean margin of each split" in build_parser().format_help()
