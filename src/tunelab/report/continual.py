"""The continual page and tables: each method's accuracy matrix as a heat-map, and the summary."""

from __future__ import annotations

from html import escape

from rich.table import Table

from tunelab.report import plots
from tunelab.report.html import STYLE, image

SUMMARY_COLUMNS = (
    ("average_accuracy", "average accuracy"),
    ("backward_transfer", "backward transfer"),
    ("forward_transfer", "forward transfer"),
)


def summary_table(results: dict) -> Table:
    table = Table(title=f"{len(results['tasks'])} tasks, {results['scenario']}-incremental")
    table.add_column("method")
    for _, title in SUMMARY_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("train s", justify="right")
    for method, found in results["methods"].items():
        cells = [_number(found.get(key)) for key, _ in SUMMARY_COLUMNS]
        table.add_row(escape(method), *cells, f"{found['train_seconds']:.1f}")
    return table


def matrix_table(method: str, found: dict) -> Table:
    """R[i][j]: rows are the task just learned, columns the task scored."""
    table = Table(title=f"{method}: accuracy on each task (columns) after learning each (rows)")
    table.add_column("after")
    for name in found["tasks"]:
        table.add_column(escape(name), justify="right")
    table.add_row("[dim]start[/]", *(f"[dim]{value:.3f}[/]" for value in found["initial"]), end_section=True)
    for name, row in zip(found["tasks"], found["matrix"], strict=False):
        table.add_row(escape(name), *(f"{value:.3f}" for value in row))
    return table


def continual_page(results: dict) -> str:
    header = "".join(f"<th>{title}</th>" for _, title in SUMMARY_COLUMNS)
    rows = "".join(
        f"<tr><td>{escape(method)}</td>"
        + "".join(f"<td>{_number(found.get(key))}</td>" for key, _ in SUMMARY_COLUMNS)
        + "</tr>"
        for method, found in results["methods"].items()
    )
    sections = [
        f"<h1>tunelab continual: {len(results['tasks'])} tasks, {escape(results['scenario'])}-incremental</h1>",
        f"<table><tr><th>method</th>{header}</tr>{rows}</table>",
        "<p>Average accuracy: over every task after the last. Backward transfer: the mean change on each "
        "earlier task from just after it was learned to the end (negative means forgotten). Forward "
        "transfer: accuracy on a task before learning it, over the untrained model's.</p>",
        "<h2>Accuracy matrices</h2><div class='grid'>",
    ]
    for method, found in results["methods"].items():
        png = plots.accuracy_matrix(found["matrix"], found["tasks"], method)
        sections.append(image(png, f"accuracy matrix ({method})"))
    sections.append("</div>")
    return f"<!doctype html><meta charset='utf-8'><title>tunelab continual</title><style>{STYLE}</style>" + "\n".join(
        sections
    )


def _number(value) -> str:
    return "–" if value is None else f"{value:+.3f}" if value < 0 else f"{value:.3f}"
