"""`tunelab demo`: the value of transfer learning, on real data, in about a minute.

A CNN pretrained on digits 0-4 (cached) is fine-tuned on digits 5-9 with five labelled images
per class; the same CNN trained from scratch on those images, and the pretrained one with a fresh
head before training (the base), are the baselines. Which five images a class gets moves test
accuracy by several points, so every model is trained on several draws and the table shows the
mean and spread.
"""

from __future__ import annotations

import copy
import statistics
from html import escape
from pathlib import Path

from rich.table import Table

from tunelab.builder import run_training
from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.io import write_atomic, write_json
from tunelab.rundir import REPORT, claimed

MARKER = ".tunelab-demo"
LABELS = {
    "base": "base (pretrained on 0-4, new head, untrained)",
    "scratch": "from scratch",
    "fine-tuned": "fine-tuned (pretrained on 0-4)",
}
DEMO_CONFIG = {
    "task": "image-classification",
    "seed": 0,
    "model": {"source": "digits-cnn"},
    "data": {
        "train": "digits",
        "digits_classes": [5, 6, 7, 8, 9],
        "digits_train_per_class": 5,
        "digits_validation_per_class": 10,
    },
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "schedule": {"name": "one-cycle"},
    "train": {"epochs": 40, "batch_size": 5, "log_every": 10, "checkpoint_every": None},
}
DRAWS = 5
MODELS = {"fine-tuned": "digits-cnn", "scratch": "cnn"}
# What the pretrained CNN already did (each digit 0-4 and how the image was turned), on the rows its
# pretraining held out: scored before and after fine-tuning, it shows what the new task cost.
RETAIN = {
    "name": "digits 0-4 (pretraining task)",
    "seed": 0,
    "data": {"train": "digits", "digits_classes": [0, 1, 2, 3, 4], "digits_pretext": "dihedral",
             "digits_validation_per_class": 5},
}  # fmt: skip


def run_demo(output: Path, stdout, stderr, draws: int = DRAWS, show: bool = True) -> dict:
    _claim(output)
    if show:
        stderr.print("pretraining the CNN on digits 0-4 (cached after the first run) ...")
    from tunelab.models.builtin import digits_cnn_folder

    digits_cnn_folder()
    runs: dict[str, list[dict]] = {name: [] for name in MODELS}
    for draw in range(draws):
        if show:
            stderr.print(f"draw {draw + 1}/{draws}: fine-tuning and training from scratch on 25 images of digits 5-9")
        for name, source in MODELS.items():
            config = copy.deepcopy(DEMO_CONFIG)
            config["model"]["source"] = source
            config["seed"] = draw
            if name == "fine-tuned":
                config["retain"] = [RETAIN]
            with claimed(output / f"draw-{draw}" / name, overwrite=True) as run_dir:
                runs[name].append(run_training(validate(config), run_dir, stderr, progress=False))
    summary = _summary(runs)
    write_json(output / "demo.json", summary)
    write_atomic(output / REPORT, _page(summary))
    if show:
        stdout.print(_table(summary))
        gain = summary["fine-tuned"]["accuracy"] - summary["scratch"]["accuracy"]
        over_base = summary["fine-tuned"]["accuracy"] - summary["base"]["accuracy"]
        stdout.print(
            f"Transfer from digits 0-4 bought {gain * 100:+.1f} points of test accuracy over training from scratch "
            f"on the same images (better on {summary['fine_tuned_wins']} of {summary['draws']} draws), "
            f"and {over_base * 100:+.1f} over the untuned base."
        )
        kept = summary["retained"]
        stdout.print(
            f"What it cost: on its pretraining task (digits 0-4) the fine-tuned CNN scores {kept['final']:.3f}, "
            f"from {kept['base']:.3f} before ({-kept['forgetting'] * 100:+.1f} points); "
            "examples/digits-forgetting.yaml shows how EWC or replay keep it."
        )
        stdout.print(f"report: {output / REPORT}")
    return summary


def _claim(output: Path) -> None:
    """Use ``output`` only if it is empty, new, or an earlier demo's."""
    if output.exists() and any(output.iterdir()) and not (output / MARKER).exists():
        raise UserError(f"output: {output} exists and is not a tunelab demo directory; choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by tunelab demo\n", encoding="utf-8")


def _summary(runs: dict[str, list[dict]]) -> dict:
    def stats(results: list[dict], stage: str) -> dict:
        accuracy = [r[stage]["test"]["accuracy"] for r in results]
        f1 = [r[stage]["test"]["f1"] for r in results]
        return {
            "accuracy": statistics.mean(accuracy),
            "accuracy_std": statistics.pstdev(accuracy),
            "f1": statistics.mean(f1),
            "per_draw": accuracy,
            "train_seconds": statistics.mean(r["train_seconds"] for r in results) if stage == "final" else 0.0,
        }

    tuned, scratch = runs["fine-tuned"], runs["scratch"]
    wins = sum(
        t["final"]["test"]["accuracy"] > s["final"]["test"]["accuracy"] for t, s in zip(tuned, scratch, strict=True)
    )
    retained = [r["retain"][RETAIN["name"]] for r in tuned]
    return {
        "retained": {
            "base": statistics.mean(r["base"]["accuracy"] for r in retained),
            "final": statistics.mean(r["final"]["accuracy"] for r in retained),
            "forgetting": statistics.mean(r["forgetting"] for r in retained),
        },
        "draws": len(tuned),
        "train_examples": tuned[0]["examples"]["train"],
        "test_examples": tuned[0]["examples"]["test"],
        "base": stats(tuned, "base"),
        "scratch": stats(scratch, "final"),
        "fine-tuned": stats(tuned, "final"),
        "fine_tuned_wins": wins,
    }


def _table(summary: dict) -> Table:
    table = Table(
        title=f"digits 5-9: {summary['train_examples']} training images, {summary['test_examples']} test images, "
        f"mean of {summary['draws']} draws"
    )
    for column in ("model", "test accuracy", "± std", "test macro F1", "train s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for key, label in LABELS.items():
        row = summary[key]
        table.add_row(
            label,
            f"{row['accuracy']:.3f}",
            f"{row['accuracy_std']:.3f}",
            f"{row['f1']:.3f}",
            f"{row['train_seconds']:.1f}",
        )
    return table


def _page(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td>{summary[key]['accuracy']:.3f} ± {summary[key]['accuracy_std']:.3f}</td>"
        f"<td>{summary[key]['f1']:.3f}</td><td>{' '.join(f'{a:.3f}' for a in summary[key]['per_draw'])}</td></tr>"
        for key, label in LABELS.items()
    )
    links = ", ".join(
        f"<a href='draw-{draw}/{name}/report.html'>draw {draw} {name}</a>"
        for draw in range(summary["draws"])
        for name in MODELS
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>tunelab demo</title>"
        "<body style='font-family:system-ui;max-width:900px;margin:2em auto'>"
        "<h1>tunelab demo: transfer learning on digits</h1>"
        f"<p>{summary['train_examples']} labelled training images of digits 5-9 per draw; "
        f"test on {summary['test_examples']}; {summary['draws']} draws of the training images.</p>"
        "<table border=1 cellpadding=6><tr><th>model</th><th>test accuracy (mean ± std)</th><th>macro F1</th>"
        f"<th>accuracy per draw</th></tr>{rows}</table>"
        f"<p>Fine-tuned beat from-scratch on {summary['fine_tuned_wins']} of {summary['draws']} draws.</p>"
        f"<p>What it cost: on its pretraining task (digits 0-4, held-out rows) the fine-tuned CNN scores "
        f"{summary['retained']['final']:.3f}, from {summary['retained']['base']:.3f} before fine-tuning.</p>"
        f"<p>Full run reports: {links}.</p></body>"
    )
