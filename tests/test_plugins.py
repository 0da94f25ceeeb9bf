"""A new task and a new strategy, defined in this module and registered from it: no file under
``src/`` changes for either. A config's ``plugins: [test_plugins]`` imports this module in every
process of a run (``compare`` trains each strategy in a process of its own)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.config import Section
from tunelab.data.labels import LabelMap
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

    def reads(self, config) -> str:
        return "text"

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


def plugin_config(text_config: dict) -> dict:
    return text_config | {
        "task": "margin-classification",
        "plugins": ["test_plugins"],
        "strategy": {"name": "top-blocks", "top-blocks": {"blocks": 1}},
        "optim": {"lr": 2e-3},
        "train": text_config["train"] | {"epochs": 3, "checkpoint_every": None},
    }


def test_the_new_task_and_strategy_train_save_predict_and_report(
    text_config, write_config, tiny_bert, tmp_path, capsys
):
    config = write_config(plugin_config(text_config))
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "-q", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["task"] == "margin-classification" and results["strategy_details"] == {"blocks": 1}
    assert results["best"]["metric"] == "margin"  # the task's own default train.metric
    base, final = results["base"]["validation"], results["final"]["validation"]
    assert final["margin"] > base["margin"] + 0.1 and final["accuracy"] >= 0.75

    # What the strategy froze is the base model's, bit for bit; the last block moved.
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    pretrained = load_file(tiny_bert / "model.safetensors")
    for layer, frozen in ((0, True), (1, False)):
        query = f"encoder.layer.{layer}.attention.self.query.weight"
        assert torch.equal(saved[f"bert.{query}"], pretrained[query]) == frozen
    assert "<h2>Margins</h2>" in (tmp_path / "run" / "report.html").read_text()

    assert main(["predict", str(tmp_path / "run"), "--text", "a great lovely movie", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) == {"input", "label"} and row["label"] in ("pos", "neg")


def test_compare_and_tune_run_the_plugins_in_their_own_processes(text_config, write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # compare's processes import test_plugins like this one
    config = write_config(plugin_config(text_config))
    output = tmp_path / "compared"
    assert main(["compare", str(config), "--strategies", "top-blocks,full", "-o", str(output), "-q"]) == 0
    rows = {row["strategy"]: row for row in json.loads((output / "comparison.json").read_text())["rows"]}
    assert not any("error" in row for row in rows.values()), rows
    assert rows["top-blocks"]["trainable_percent"] < rows["full"]["trainable_percent"]
    assert rows["top-blocks"]["lr"] == 2 * rows["full"]["lr"]  # its own rate factor
    assert set(rows["full"]["validation"]) == {"loss", "accuracy", "margin"}

    tune = plugin_config(text_config) | {"tune": {"space": {"strategy.top-blocks.blocks": {"choices": [1, 2]}}}}
    assert (
        main(["tune", str(write_config(tune, "tune.yaml")), "--trials", "2", "-o", str(tmp_path / "tuned"), "-q"]) == 0
    )
    study = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    assert study["metric"] == "margin"
    assert sorted(trial["params"]["strategy.top-blocks.blocks"] for trial in study["trials"]) == [1, 2]


def test_a_plugin_section_is_checked_by_its_strategy(text_config, write_config, tmp_path, capsys):
    bad = plugin_config(text_config)
    bad["strategy"] = {"name": "top-blocks", "top-blocks": {"block": 1}}
    assert main(["train", str(write_config(bad)), "-o", str(tmp_path / "run"), "-q"]) == 2
    assert "top-blocks.block" in capsys.readouterr().err
    bad["strategy"] = {"name": "full", "nothing": {}}
    assert main(["train", str(write_config(bad)), "-o", str(tmp_path / "run"), "-q"]) == 2
    assert "unknown key 'strategy.nothing'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
