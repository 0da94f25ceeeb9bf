"""The study's table and page: every trial, the best one, the history, importances, Pareto front."""

from __future__ import annotations

from html import escape

from rich.markup import escape as markup_escape
from rich.table import Table

from tunelab.report import plots
from tunelab.report.html import STYLE, image

SHOWN_TRIALS = 12


def trials_table(summary: dict) -> Table:
    """The best trials first (finished ones), then the pruned and failed; parameters in one column."""
    objectives = summary["objectives"]
    table = Table(title=_title(summary))
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for name in objectives:
        table.add_column(name.replace("_", " "), justify="right", no_wrap=True)
    table.add_column("parameters")
    for row in _ranked(summary)[:SHOWN_TRIALS]:
        mark = " *" if row["config_as_given"] else ""
        values = [_value(value) for value in row["values"] or [None] * len(objectives)]
        state = row["state"] if row["state"] != "pruned" else f"pruned@{row['pruned_at']}"
        params = " ".join(f"{key.rsplit('.', 1)[-1]}={_value(value)}" for key, value in row["params"].items())
        table.add_row(f"{row['number']}{mark}", state, *values, markup_escape(params))
    if any(row["config_as_given"] for row in summary["trials"]):
        table.caption = "* the config as given"
    return table


def best_lines(summary: dict, best_file) -> list[str]:
    lines = []
    if "best" in summary:
        best = summary["best"]
        given = summary.get("config_as_given")
        line = f"best: trial {best['number']}, validation {summary['objectives'][0]} {best['value']:.4f}"
        if given:
            line += f" (the config as given, trial {given['number']}: {given['value']:.4f})"
        lines += [line, f"ready to run: tunelab train {best_file}"]
    if "pareto" in summary:
        lines.append(f"Pareto front: {len(summary['pareto'])} trials (report)")
    return lines


def tune_page(summary: dict, study) -> str:
    objectives = summary["objectives"]
    rows = "".join(
        f"<tr><td>{row['number']}{' (as given)' if row['config_as_given'] else ''}</td><td>{row['state']}</td>"
        + (
            "".join(f"<td>{value:.4g}</td>" for value in row["values"])
            if row["values"]
            else "<td></td>" * len(objectives)
        )
        + "<td>"
        + escape(", ".join(f"{k}={_value(v)}" for k, v in row["params"].items()))
        + "</td></tr>"
        for row in _ranked(summary)
    )
    sections = [
        f"<h1>tunelab tune: {escape(_title(summary))}</h1>",
        "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in best_lines(summary, "best.yaml")) + "</ul>",
        f"<p>Trials: {escape(', '.join(f'{count} {state}' for state, count in summary['counts'].items()))}.</p>",
        "<div class='grid'>",
        image(plots.tune_history(summary["trials"], objectives[0], summary["directions"][0]), "optimisation history"),
    ]
    if summary.get("importances"):
        sections.append(image(plots.importances(summary["importances"]), "parameter importances"))
    if summary.get("pareto"):
        sections.append(image(plots.pareto(summary["trials"], summary["pareto"], objectives), "Pareto front"))
    sections += ["</div>", "<h2>Trials</h2><table><tr><th>trial</th><th>state</th>"
                 + "".join(f"<th>{escape(name)}</th>" for name in objectives)
                 + f"<th>parameters</th></tr>{rows}</table>"]  # fmt: skip
    return f"<!doctype html><meta charset='utf-8'><title>tunelab tune</title><style>{STYLE}</style>" + "\n".join(
        sections
    )


def _title(summary: dict) -> str:
    goal = " and ".join(
        f"{'minimise' if direction == 'minimize' else 'maximise'} {name}"
        for name, direction in zip(summary["objectives"], summary["directions"], strict=True)
    )
    return f"{len(summary['trials'])} trials: {goal}"


def _ranked(summary: dict) -> list[dict]:
    """Finished trials best first, then pruned (latest step first), then the rest."""
    maximise = summary["directions"][0] == "maximize"
    complete = [row for row in summary["trials"] if row["state"] == "complete"]
    complete.sort(key=lambda row: row["values"][0], reverse=maximise)
    others = [row for row in summary["trials"] if row["state"] != "complete"]
    return complete + others


def _value(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
