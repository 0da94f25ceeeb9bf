"""The comparison page: one table, every strategy's curves on shared axes, metric vs trainable share."""

from __future__ import annotations

from html import escape
from pathlib import Path

from rich import box
from rich.table import Table

from tunelab.io import read_jsonl, write_atomic
from tunelab.report import plots
from tunelab.report.html import STYLE, image
from tunelab.rundir import METRICS

COLUMNS = (  # headers on two short lines, so the table fits an 80-column terminal
    ("strategy", "strategy"),
    ("lr", "lr"),
    ("val", "val\n{metric}"),
    ("test", "test\n{metric}"),
    ("trainable", "train-\nable"),
    ("percent", "%"),
    ("seconds", "train\ns"),
    ("memory", "peak\nMB"),
    ("size", "saved\nMB"),
)
FORGETTING_COLUMNS = (  # a second table, when some run measured forgetting
    ("strategy", "run"),
    ("test", "new task\ntest {metric}"),
    ("retain", "retain sets\nown metric"),  # accuracy of classes, entity F1 of tags
    ("forget", "forgetting\n(points)"),
    ("cka", "feature\nCKA"),
)
SHORT = {"accuracy": "acc", "precision": "prec", "recall": "rec", "f1": "f1", "auc": "auc", "loss": "loss"}


def row_cells(row: dict, metric: str) -> dict[str, str]:
    def value(split: str) -> str:
        number = (row.get(split) or {}).get(metric)
        return "–" if number is None else f"{number:.3f}"

    if "validation" not in row:
        return {"strategy": row["strategy"], "lr": rate_text(row["lr"]), "val": "failed"}
    return {
        "strategy": row["strategy"] + (" (!)" if row.get("error") else ""),
        "lr": rate_text(row["lr"]),
        "val": value("validation"),
        "test": value("test"),
        "trainable": _count(row["trainable"]),
        "percent": f"{row['trainable_percent']:.2f}",
        "seconds": f"{row['train_seconds']:.1f}" if row["train_seconds"] < 100 else f"{row['train_seconds']:.0f}",
        "memory": f"{row['peak_memory_mb']:.0f}",
        "size": f"{row['checkpoint_mb']:.2f}",
        "retain": "–" if row.get("retain_score") is None else f"{row['retain_score']:.3f}",
        "forget": "–" if row.get("forgetting") is None else f"{100 * row['forgetting']:.1f}",
        "cka": "–" if row.get("drift") is None else f"{row['drift']:.3f}",
    }


def measured_forgetting(summary: dict) -> bool:
    return any(row.get("forgetting") is not None for row in summary["rows"])


def rate_text(lr: float | str) -> str:
    return lr if isinstance(lr, str) else f"{lr:.3g}"


def _count(number: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if number >= size:
            return f"{number / size:.1f}{unit}"
    return str(number)


def comparison_table(summary: dict, shown: tuple = COLUMNS, title: str = "") -> Table:
    metric = summary["metric"]
    rows = [row_cells(row, metric) for row in summary["rows"]]
    table = Table(
        title=title or "strategies compared (same data, seed and step budget)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
    )
    for key, header in shown:
        header = header.format(metric=SHORT.get(metric, metric))
        width = max(len(text) for text in [*header.splitlines(), *(cells.get(key, "") for cells in rows)])
        justify = "left" if key == "strategy" else "right"
        table.add_column(header, justify=justify, no_wrap=True, min_width=width)
    for cells in rows:
        table.add_row(*(cells.get(key, "") for key, _ in shown))
    return table


def forgetting_table(summary: dict) -> Table:
    """Per run: the new task against what the retain sets lost."""
    return comparison_table(summary, FORGETTING_COLUMNS, "what each run gained and forgot")


def failure_lines(summary: dict) -> list[str]:
    return [f"{row['strategy']}: {row['error']}" for row in summary["rows"] if row.get("error")]


def _curves(rows: list[dict]) -> dict[str, list[dict]]:
    """metrics.jsonl of every strategy that ran, by name."""
    return {
        row["strategy"]: read_jsonl(Path(row["run_dir"]) / METRICS)
        for row in rows
        if (Path(row["run_dir"]) / METRICS).exists()
    }


def write_comparison_report(output: Path, summary: dict, path: Path) -> Path:
    metric = summary["metric"]
    sections = [f"<h1>tunelab compare: {escape(Path(output).name)}</h1>", _html_table(summary, COLUMNS)]
    if measured_forgetting(summary):
        sections += ["<h2>Gained and forgotten</h2>", _html_table(summary, FORGETTING_COLUMNS)]
    failed = [row for row in summary["rows"] if row.get("error")]
    for row in failed:
        sections.append(f"<p><b>{escape(row['strategy'])}</b>: {escape(row['error'])}</p>")
    records = _curves(summary["rows"])
    if records:
        sections.append("<h2>Curves</h2><div class='grid'>")
        sections.append(image(plots.strategy_curves(records, "train", "loss", "train loss"), "train loss"))
        sections.append(
            image(plots.strategy_curves(records, "eval", metric, f"validation {metric}"), f"validation {metric}")
        )
        sections.append("</div>")
    points = [
        (row["strategy"], row["trainable_percent"], row["validation"][metric])
        for row in summary["rows"]
        if "validation" in row and row["validation"].get(metric) is not None
    ]
    sections += _gain_and_forgetting(summary, metric)
    if points:
        sections.append(f"<h2>Validation {escape(metric)} against trainable parameters</h2>")
        sections.append(image(plots.metric_vs_trainable(points, metric), "metric vs trainable parameters"))
    page = f"<!doctype html><meta charset='utf-8'><title>tunelab compare</title><style>{STYLE}</style>"
    write_atomic(path, page + "\n".join(sections))
    return path


def _html_table(summary: dict, shown: tuple) -> str:
    metric = summary["metric"]
    header = "".join(f"<th>{escape(title.format(metric=metric)).replace(chr(10), ' ')}</th>" for _, title in shown)
    body = []
    for row in summary["rows"]:
        cells = row_cells(row, metric)
        body.append("<tr>" + "".join(f"<td>{escape(cells.get(key, ''))}</td>" for key, _ in shown) + "</tr>")
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


def _gain_and_forgetting(summary: dict, metric: str) -> list[str]:
    """What each run gained on the new task against what it lost on the retain sets."""
    rows = [row for row in summary["rows"] if row.get("forgetting") is not None and "test" in row]
    if not rows:
        return []
    split = "test" if all(row.get("test") for row in rows) else "validation"
    points = [(row["strategy"], 100 * row["forgetting"], 100 * row[split][metric]) for row in rows]
    return [
        f"<h2>New task against forgetting</h2><p>{split} {escape(metric)} on the new task against the drop in "
        "score on the retain sets (mean over sets), in points: up and to the left is better.</p>",
        image(plots.gain_vs_forgetting(points, f"{split} {metric} (%)"), "gain against forgetting"),
    ]
