"""`tunelab demo`: the value of transfer learning, on real data, in about a minute.

A CNN pretrained on digits 0-4 (cached) is fine-tuned on digits 5-9 with ten labelled images per
class; the same CNN trained from scratch on those images, and the pretrained one with a fresh
head before training (the base), are the baselines.
"""

from __future__ import annotations

import copy
from html import escape
from pathlib import Path

from rich.table import Table

from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.io import write_atomic, write_json
from tunelab.recipes.train import run_training
from tunelab.rundir import REPORT, prepare_run_dir

MARKER = ".tunelab-demo"
DEMO_CONFIG = {
    "task": "image-classification",
    "seed": 0,
    "model": {"source": "digits-cnn"},
    "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_train_per_class": 10,
             "digits_validation_per_class": 10},
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_ratio": 0.1},
    "train": {"epochs": 40, "batch_size": 10, "log_every": 5},
}


def run_demo(output: Path, stdout, stderr, show: bool = True, progress: bool = True) -> dict:
    _claim(output)
    if show:
        stderr.print("pretraining the CNN on digits 0-4 (cached after the first run) ...")
    from tunelab.models.builtin import digits_cnn_folder

    digits_cnn_folder()
    runs = {}
    for name, source in (("fine-tuned", "digits-cnn"), ("scratch", "cnn")):
        config = copy.deepcopy(DEMO_CONFIG)
        config["model"]["source"] = source
        if show:
            stderr.print(f"training '{name}' on 50 images of digits 5-9 ...")
        run_dir = prepare_run_dir(output / name, overwrite=True)
        runs[name] = run_training(validate(config), run_dir, stderr, progress=progress)
    summary = _summary(runs)
    write_json(output / "demo.json", summary)
    write_atomic(output / REPORT, _page(summary))
    if show:
        stdout.print(_table(summary))
        gain = summary["fine-tuned"]["accuracy"] - summary["scratch"]["accuracy"]
        stdout.print(
            f"Transfer from digits 0-4 bought {gain * 100:+.1f} points of test accuracy over training "
            f"from scratch on the same 50 images, and {100 * (summary['fine-tuned']['accuracy'] - summary['base']['accuracy']):+.1f} "
            "over the untuned base."
        )
        stdout.print(f"report: {output / REPORT}")
    return summary


def _claim(output: Path) -> None:
    """Use ``output`` only if it is empty, new, or an earlier demo's."""
    if output.exists() and any(output.iterdir()) and not (output / MARKER).exists():
        raise UserError(f"output: {output} exists and is not a tunelab demo directory; choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by tunelab demo\n", encoding="utf-8")


def _summary(runs: dict) -> dict:
    tuned, scratch = runs["fine-tuned"], runs["scratch"]
    row = lambda metrics, seconds: {  # noqa: E731
        "accuracy": metrics["accuracy"], "f1": metrics["f1"], "loss": metrics["loss"], "train_seconds": seconds,
    }
    return {
        "test_examples": tuned["final"]["test"]["examples"],
        "train_examples": tuned["examples"]["train"],
        "base": row(tuned["base"]["test"], 0.0),
        "scratch": row(scratch["final"]["test"], scratch["train_seconds"]),
        "fine-tuned": row(tuned["final"]["test"], tuned["train_seconds"]),
    }


def _table(summary: dict) -> Table:
    table = Table(title=f"digits 5-9: {summary['train_examples']} training images, {summary['test_examples']} test images")
    for column in ("model", "test accuracy", "test macro F1", "test loss", "train s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    labels = {"base": "base (pretrained on 0-4, new head, untrained)", "scratch": "from scratch",
              "fine-tuned": "fine-tuned (pretrained on 0-4)"}
    for key, label in labels.items():
        row = summary[key]
        table.add_row(label, f"{row['accuracy']:.3f}", f"{row['f1']:.3f}", f"{row['loss']:.3f}", f"{row['train_seconds']:.1f}")
    return table


def _page(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{summary[k]['accuracy']:.3f}</td><td>{summary[k]['f1']:.3f}</td></tr>"
        for k in ("base", "scratch", "fine-tuned")
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>tunelab demo</title>"
        "<body style='font-family:system-ui;max-width:800px;margin:2em auto'>"
        "<h1>tunelab demo: transfer learning on digits</h1>"
        f"<p>{summary['train_examples']} labelled training images of digits 5-9; test on {summary['test_examples']}.</p>"
        f"<table border=1 cellpadding=6><tr><th>model</th><th>test accuracy</th><th>macro F1</th></tr>{rows}</table>"
        "<p>Full run reports: <a href='fine-tuned/report.html'>fine-tuned</a>, "
        "<a href='scratch/report.html'>from scratch</a>.</p></body>"
    )
