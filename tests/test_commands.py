"""The commands end to end: train, eval, predict and demo, run in-process through ``main``.

One tiny-BERT run (module scope) serves every test that only reads a finished run.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_text_config
from tunelab.cli import main
from tunelab.io import read_jsonl

SPLITS = ("train", "validation", "test")
OVERRIDES = ["--set", "optim.lr=0.002", "--set", "train.epochs=2", "--set", "schedule.name=cosine"]


@pytest.fixture(scope="module")
def text_run(tiny_bert, sentiment_files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text-run")
    config = make_text_config(tiny_bert, sentiment_files)
    config["train"] |= {"epochs": 1, "eval_batch_size": 32}
    config_file = folder / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_dir = folder / "run"
    assert main(["train", str(config_file), "--output", str(run_dir), "--quiet", *OVERRIDES]) == 0
    return run_dir


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def run_json(capsys, argv: list[str]):
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------------- train


def test_set_overrides_reach_the_resolved_config(text_run):
    resolved = yaml.safe_load((text_run / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["optim"]["lr"] == 0.002
    assert resolved["train"]["epochs"] == 2
    assert resolved["schedule"]["name"] == "cosine"
    assert resolved["strategy"]["name"] == "full"  # defaults are written out too
    assert results_of(text_run)["epochs_completed"] == 2


def test_set_strategy_name_alone_moves_the_files_rate_by_the_strategies_factor(tmp_path, caplog):
    from tunelab.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "x.csv"}, "optim": {"lr": 2e-4}}), encoding="utf-8")
    assert load_config(path, ["strategy.name=lora"]).optim.lr == pytest.approx(2e-3)  # LoRA: 10x full's
    assert "the file's 0.0002 was set for full; lora trains at 0.002" in caplog.text
    assert load_config(path, ["strategy.name=lora", "optim.lr=5e-4"]).optim.lr == 5e-4  # a rate given wins
    assert load_config(path, ["strategy.name=full"]).optim.lr == 2e-4
    path.write_text(yaml.safe_dump({"data": {"train": "x.csv"}, "strategy": {"name": "ia3"}, "optim": {"lr": 1e-2}}))
    assert load_config(path, ["strategy.name=bitfit"]).optim.lr == pytest.approx(2e-3)  # 1e-2 / 50 * 10


def test_results_hold_base_and_final_metrics_for_every_split(text_run):
    results = results_of(text_run)
    for stage in ("base", "final"):
        assert set(results[stage]) == set(SPLITS), stage
        for split in SPLITS:
            metrics = results[stage][split]
            for key in ("loss", "accuracy", "precision", "recall", "f1", "auc", "confusion_matrix"):
                assert key in metrics, (stage, split, key)
            assert sum(map(sum, metrics["confusion_matrix"])) == metrics["examples"]
    assert results["examples"] == {"train": 64, "validation": 32, "test": 32}

    parameters = results["parameters"]
    assert 0 < parameters["trainable"] <= parameters["total"]
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(text_run / "model")
    assert parameters["total"] == sum(p.numel() for p in saved.parameters())
    assert results["train_seconds"] > 0
    assert results["peak_memory_mb"] > 0

    final = results["final"]
    for metric in ("loss", "accuracy", "f1"):
        expected = final["train"][metric] - final["validation"][metric]
        assert results["gap"][metric] == pytest.approx(expected)


def test_metrics_file_has_train_and_eval_lines(text_run):
    records = read_jsonl(text_run / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    steps = results_of(text_run)["steps"]  # two epochs of 64 examples in batches of 8
    assert steps == 16
    assert [r["step"] for r in train] == list(range(2, steps + 1, 2))  # log_every 2
    assert all({"step", "epoch", "loss", "lr"} <= set(r) for r in train)
    assert [r["step"] for r in evals] == [steps // 2, steps]  # one evaluation per epoch
    assert all(r["split"] == "validation" and "accuracy" in r for r in evals)
    # The best validation evaluation is what the run reports as best.
    best = results_of(text_run)["best"]
    assert best["value"] == max(r["accuracy"] for r in evals)


def test_report_is_self_contained(text_run):
    page = (text_run / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 5  # loss, metrics, lr, two confusion matrices
    assert "confusion matrix" in page.lower()
    assert "learning rate" in page.lower()
    for pattern in (r"""(src|href)\s*=\s*['"]?(https?:)?//""", r"<script[^>]+src", r"<link", r"@import", r"url\("):
        assert not re.search(pattern, page, re.IGNORECASE), pattern


def test_an_existing_run_is_replaced_only_with_overwrite(text_run, tmp_path, capsys):
    run_dir = shutil.copytree(text_run, tmp_path / "run")
    config = run_dir / "config.yaml"
    before = (run_dir / "results.json").read_bytes()
    short = ["--set", "train.max_steps=1", "--set", "evaluate.base=false", "--quiet"]

    capsys.readouterr()
    assert main(["train", str(config), "--output", str(run_dir), *short]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--overwrite" in error and str(run_dir) in error
    assert (run_dir / "results.json").read_bytes() == before

    assert main(["train", str(config), "--output", str(run_dir), "--overwrite", *short]) == 0
    assert results_of(run_dir)["steps"] == 1
    assert len([r for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]) == 1


# ------------------------------------------------------------------------------------ eval


def test_eval_reproduces_the_runs_final_metrics(text_run, capsys):
    final = results_of(text_run)["final"]
    metrics = run_json(capsys, ["eval", str(text_run)])
    assert set(metrics) == {"validation", "test"}
    for split, values in metrics.items():
        for key in ("loss", "accuracy", "f1", "auc"):
            assert values[key] == pytest.approx(final[split][key], abs=1e-5), (split, key)
        assert values["confusion_matrix"] == final[split]["confusion_matrix"]


def test_eval_on_another_file(text_run, sentiment_files, tmp_path, capsys):
    other = shutil.copy(sentiment_files["test"], tmp_path / "other.csv")
    metrics = run_json(capsys, ["eval", str(text_run), "--data", str(other)])
    assert set(metrics) == {"data"}
    expected = results_of(text_run)["final"]["test"]
    assert metrics["data"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["data"]["loss"] == pytest.approx(expected["loss"], abs=1e-5)

    capsys.readouterr()
    assert main(["eval", str(text_run), "--data", str(other)]) == 0
    assert "accuracy" in capsys.readouterr().out  # the table


# --------------------------------------------------------------------------------- predict

QUERIES = ["the movie was great", "an awful boring plot", "really lovely acting"]


def plain_transformers_probabilities(run_dir: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return torch.softmax(logits, dim=-1)


def test_predict_texts_match_plain_transformers(text_run, capsys):
    rows = run_json(capsys, ["predict", str(text_run), *(arg for q in QUERIES for arg in ("--text", q))])
    assert [row["input"] for row in rows] == QUERIES
    probabilities = plain_transformers_probabilities(text_run, QUERIES)
    assert [row["label"] for row in rows] == [["neg", "pos"][i] for i in probabilities.argmax(-1).tolist()]
    assert [row["probability"] for row in rows] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-5)
    every = [[row["probabilities"][name] for name in ("neg", "pos")] for row in rows]  # each class, not only the top
    assert every == [pytest.approx(expected, abs=1e-5) for expected in probabilities.tolist()]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_predict_writes_every_prediction_to_a_file_and_never_over_one(text_run, tmp_path, capsys, suffix):
    target = tmp_path / f"predictions{suffix}"
    two = ["--text", QUERIES[0], "--text", QUERIES[1]]
    printed = run_json(capsys, ["predict", str(text_run), *two, "-o", str(target)])
    if suffix == ".jsonl":
        assert read_jsonl(target) == printed
    else:
        import pandas as pd

        frame = pd.read_csv(target)
        assert list(frame.columns) == ["input", "label", "probability", "p(neg)", "p(pos)"]
        assert frame["p(pos)"].tolist() == pytest.approx([row["probabilities"]["pos"] for row in printed])
    before = target.read_bytes()
    assert main(["predict", str(text_run), "--text", "again", "-o", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err and target.read_bytes() == before


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_predict_from_a_file(text_run, tmp_path, capsys, suffix):
    path = tmp_path / f"queries{suffix}"
    if suffix == ".csv":
        path.write_text("text,extra\n" + "".join(f"{q},x\n" for q in QUERIES), encoding="utf-8")
    else:
        path.write_text("\n".join(QUERIES) + "\n\n", encoding="utf-8")
    rows = run_json(capsys, ["predict", str(text_run), "--input", str(path)])
    assert [row["input"] for row in rows] == QUERIES
    assert all(row["label"] in ("neg", "pos") and 0.5 <= row["probability"] <= 1 for row in rows)

    capsys.readouterr()
    assert main(["predict", str(text_run), "--input", str(path)]) == 0
    assert "predictions" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ demo


def test_demo_writes_a_table_report_and_summary_and_can_run_twice(tmp_path, capsys):
    output = tmp_path / "demo"
    for _ in range(2):
        capsys.readouterr()
        assert main(["demo", "--output", str(output), "--quiet", "--draws", "2"]) == 0
        printed = capsys.readouterr().out
        assert "fine-tuned" in printed and "from scratch" in printed and "test accuracy" in printed
        assert "What it cost: on its pretraining task (digits 0-4)" in printed
        summary = json.loads((output / "demo.json").read_text(encoding="utf-8"))
        kept = summary["retained"]
        assert kept["base"] > 0.85 and kept["forgetting"] == pytest.approx(kept["base"] - kept["final"])
        assert {"base", "scratch", "fine-tuned"} <= set(summary)
        assert 0 <= summary["fine-tuned"]["accuracy"] <= 1
        assert (output / "report.html").is_file()
        assert summary["draws"] == 2 and len(summary["fine-tuned"]["per_draw"]) == 2
        for draw in range(2):
            assert (output / f"draw-{draw}" / "fine-tuned" / "report.html").is_file()
            assert (output / f"draw-{draw}" / "scratch" / "report.html").is_file()
    assert not any(p.name.endswith(".previous") for p in output.rglob("*"))


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["demo", "--output", str(tmp_path), "--quiet"]) == 2
    assert "not a tunelab demo directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


# ------------------------------------------------------------------- module:function models

TINY_MODULE = """
    from torch import nn


    def build(num_labels, in_channels):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32), nn.ReLU(), nn.Linear(32, num_labels))
"""


def test_module_function_source_trains_on_digits(tmp_path, monkeypatch, capsys):
    (tmp_path / "tunelab_test_tinynet.py").write_text(textwrap.dedent(TINY_MODULE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": "tunelab_test_tinynet:build"},
        "data": {"train": "digits", "digits_classes": [0, 1, 2]},
        "optim": {"lr": 0.01},
        "train": {"epochs": 3, "batch_size": 32},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_dir = tmp_path / "run"
    results = run_json(capsys, ["train", str(config_file), "--output", str(run_dir)])
    assert results["labels"] == ["0", "1", "2"]
    assert results["parameters"]["total"] == 64 * 32 + 32 + 32 * 3 + 3
    assert results["final"]["test"]["accuracy"] > 0.8

    meta = json.loads((run_dir / "model" / "tunelab.json").read_text(encoding="utf-8"))
    assert meta["source"] == "tunelab_test_tinynet:build"
    assert meta["init_kwargs"] == {"num_labels": 3, "in_channels": 1}
    metrics = run_json(capsys, ["eval", str(run_dir)])
    assert metrics["test"]["accuracy"] == pytest.approx(results["final"]["test"]["accuracy"])
