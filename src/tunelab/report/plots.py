"""Matplotlib figures for a run, returned as base64 PNG so the report is one file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def to_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def loss_curves(train_logs: list[dict], evals: list[dict]) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.4))
    axis.plot([r["step"] for r in train_logs], [r["loss"] for r in train_logs], label="train loss")
    if evals:
        axis.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    return to_png(figure)


def metric_curves(evals: list[dict], metrics=("accuracy", "f1", "auc")) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.4))
    values = []
    for metric in metrics:
        points = [(r["step"], r[metric]) for r in evals if r.get(metric) is not None]
        if points:
            axis.plot(*zip(*points, strict=True), "o-", label=f"validation {metric}")
            values += [value for _, value in points]
    axis.set_xlabel("optimizer step")
    axis.set_ylim(min(0, *values) if values else 0, 1.02)  # an R² below zero stays in view
    axis.legend()
    axis.grid(alpha=0.3)
    return to_png(figure)


def learning_rate_curve(train_logs: list[dict]) -> str:
    figure, axis = plt.subplots(figsize=(6, 2.6))
    axis.plot([r["step"] for r in train_logs], [r["lr"] for r in train_logs])
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("learning rate")
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.grid(alpha=0.3)
    return to_png(figure)


def confusion_matrix(matrix: list[list[int]], labels: list[str], title: str) -> str:
    size = max(3.0, 0.5 * len(labels) + 1.5)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    return to_png(figure)


def strategy_curves(records: dict[str, list[dict]], kind: str, key: str, ylabel: str) -> str:
    """One line per strategy on shared axes: ``key`` of the ``kind`` records ("train" or "eval")."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    for name, rows in records.items():
        points = [(r["step"], r[key]) for r in rows if r["type"] == kind and r.get(key) is not None]
        if points:
            axis.plot(*zip(*points, strict=True), "o-" if kind == "eval" else "-", label=name, markersize=3)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)


def metric_vs_trainable(points: list[tuple[str, float, float]], metric: str) -> str:
    """Scatter of (name, trainable %, validation metric), the x axis logarithmic."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    together: dict[tuple[float, float], list[str]] = {}  # strategies on the same spot share one label
    for name, percent, value in points:
        together.setdefault((round(percent, 2), round(value, 4)), []).append(name)
    for index, ((percent, value), names) in enumerate(sorted(together.items())):
        axis.scatter(percent, value)
        offset = (4, 4) if index % 2 == 0 else (4, -11)  # neighbours alternate above and below
        axis.annotate(", ".join(names), (percent, value), textcoords="offset points", xytext=offset, fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (% of total, log scale)")
    axis.set_ylabel(f"validation {metric}")
    axis.grid(alpha=0.3, which="both")
    return to_png(figure)


def gain_vs_forgetting(points: list[tuple[str, float, float]], ylabel: str) -> str:
    """One labelled point per run: forgetting (x, lower is better) against the new task (y)."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name, forgetting, score in points:
        axis.scatter(forgetting, score)
        axis.annotate(name, (forgetting, score), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set_xlabel("forgetting on retain sets (points)")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    return to_png(figure)


def accuracy_matrix(matrix: list[list[float]], tasks: list[str], title: str) -> str:
    """R[i][j] as a heat-map: rows the task just learned, columns the task scored."""
    size = max(3.5, 0.6 * len(tasks) + 1.5)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    axis.set_xticks(range(len(tasks)), tasks)
    axis.set_yticks(range(len(matrix)), tasks[: len(matrix)])
    axis.set_xlabel("task scored")
    axis.set_ylabel("after learning")
    axis.set_title(title)
    return to_png(figure)


def lr_range(found: dict) -> str:
    """Loss (raw and smoothed) against learning rate on a log axis, the suggestions marked."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    axis.plot(found["rates"], found["losses"], alpha=0.3, label="loss")
    axis.plot(found["rates"], found["smoothed"], label="smoothed loss")
    axis.axvspan(*found["descent"], color="tab:green", alpha=0.08, label="descent")
    for key, style in (("steepest", ":"), ("minimum_tenth", "--"), ("suggested", "-")):
        axis.axvline(found[key], linestyle=style, color="black", alpha=0.6, label=f"{key} {found[key]:.2g}")
    axis.set_xscale("log")
    low, high = min(found["smoothed"]), max(found["smoothed"][:5] + [min(found["smoothed"]) * 2])
    axis.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)


def tune_history(trials: list[dict], metric: str, direction: str) -> str:
    """Each finished trial's value in order, the best so far as a line, pruned trials at their last report."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    done = [(t["number"], t["values"][0]) for t in trials if t["state"] == "complete"]
    if done:
        numbers, values = zip(*done, strict=True)
        axis.scatter(numbers, values, label="finished", zorder=3)
        best, running = [], None
        for value in values:
            better = running is None or (value < running if direction == "minimize" else value > running)
            running = value if better else running
            best.append(running)
        axis.step(numbers, best, where="post", color="black", label="best so far")
    pruned = [t["number"] for t in trials if t["state"] == "pruned"]
    for number in pruned:
        axis.axvline(number, color="grey", alpha=0.25)
    if pruned:
        axis.plot([], [], color="grey", alpha=0.4, label="pruned")
    axis.set_xlabel("trial")
    axis.set_ylabel(f"validation {metric}")
    if done or pruned:
        axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)


def importances(values: dict[str, float]) -> str:
    figure, axis = plt.subplots(figsize=(6, 0.5 * len(values) + 1.2))
    names = list(values)[::-1]
    axis.barh(names, [values[name] for name in names])
    axis.set_xlabel("importance for the objective (Optuna, normalised)")
    axis.grid(alpha=0.3, axis="x")
    return to_png(figure)


def pareto(trials: list[dict], front: list[dict], objectives: list[str]) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.6))
    done = [t for t in trials if t["state"] == "complete"]
    axis.scatter([t["values"][1] for t in done], [t["values"][0] for t in done], alpha=0.4, label="trials")
    ordered = sorted(front, key=lambda t: t["values"][1])
    axis.plot([t["values"][1] for t in ordered], [t["values"][0] for t in ordered], "o-", color="black",
              label="Pareto front")  # fmt: skip
    axis.set_xlabel(objectives[1].replace("_", " "))
    axis.set_ylabel(f"validation {objectives[0]}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)


def label_counts(counts_by_split: dict[str, dict[str, int]]) -> str:
    """Grouped bars: how many rows of each label every split holds."""
    return grouped_bars(counts_by_split, "rows")


def grouped_bars(values_by_series: dict[str, dict[str, float]], ylabel: str, ylim: tuple | None = None) -> str:
    """One cluster of bars per category, one bar per series (a split, or base and fine-tuned)."""
    categories = []
    for values in values_by_series.values():
        categories += [category for category in values if category not in categories]
    figure, axis = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(values_by_series)
    for index, (series, values) in enumerate(values_by_series.items()):
        positions = [i + index * width for i in range(len(categories))]
        axis.bar(positions, [values.get(category, 0) for category in categories], width, label=series)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=45, ha="right")
    axis.set_ylabel(ylabel)
    if ylim:
        axis.set_ylim(*ylim)
    axis.legend()
    axis.grid(alpha=0.3, axis="y")
    return to_png(figure)


def length_histograms(histograms: dict[str, dict], max_length: int) -> str:
    """Token-length distribution per split, with the max_length cut marked."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    for split, histogram in histograms.items():
        edges, counts = histogram["edges"], histogram["counts"]
        axis.stairs(counts, edges, label=split)
    axis.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    axis.set_xlabel("tokens (model's own tokenizer)")
    axis.set_ylabel("rows")
    axis.legend()
    axis.grid(alpha=0.3)
    return to_png(figure)


def predicted_vs_true(points: dict, base: dict | None, split: str) -> str:
    """Each row's prediction against its target, the diagonal a perfect model would sit on."""
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    if base:
        axis.scatter(base["true"], base["predicted"], s=6, alpha=0.25, color="#999", label="base model")
    axis.scatter(points["true"], points["predicted"], s=6, alpha=0.5, label="fine-tuned")
    low = min(min(points["true"]), min(points["predicted"]))
    high = max(max(points["true"]), max(points["predicted"]))
    axis.plot([low, high], [low, high], color="#c62828", linewidth=1, label="predicted = true")
    axis.set_xlabel("true")
    axis.set_ylabel("predicted")
    axis.set_title(f"predicted vs true ({split})")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return to_png(figure)


def residuals(points: dict, split: str) -> str:
    """Prediction minus target against the target: a slope shows the model pulling toward the mean."""
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    error = [p - t for p, t in zip(points["predicted"], points["true"], strict=True)]
    axis.scatter(points["true"], error, s=6, alpha=0.5)
    axis.axhline(0, color="#c62828", linewidth=1)
    axis.set_xlabel("true")
    axis.set_ylabel("predicted - true")
    axis.set_title(f"residuals ({split})")
    axis.grid(alpha=0.3)
    return to_png(figure)
