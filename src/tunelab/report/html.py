"""Assemble report.html from a run directory's results.json and metrics.jsonl."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from tunelab.io import read_jsonl, write_atomic
from tunelab.report import plots
from tunelab.report.terminal import retain_metric
from tunelab.tasks import get_task, scalar_metrics

STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}.up{color:#1a7f37}.down{color:#c62828}
img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:1em}code{background:#f3f3f3;padding:0 .3em}
"""


def write_report(run_dir: Path, path: Path) -> Path:
    results = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))
    records = read_jsonl(Path(run_dir) / "metrics.jsonl")
    train_logs = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    task = get_task(results["task"])
    sections = [
        f"<h1>tunelab run: {escape(Path(run_dir).name)}</h1>",
        _summary(results),
        "<h2>Base model vs fine-tuned</h2>",
        metrics_table(results.get("base", {}), results["final"], task.lower_is_better),
        _gap(results.get("gap", {})),
    ]
    if train_logs:
        sections += ["<h2>Training curves</h2><div class='grid'>"]
        sections.append(image(plots.loss_curves(train_logs, evals), "loss curves"))
        if evals:
            sections.append(image(plots.metric_curves(evals, task.curve_metrics), "validation metric curves"))
        sections += [image(plots.learning_rate_curve(train_logs), "learning rate curve"), "</div>"]
    sections += _forgetting_section(results)
    sections += _groups_section(results)
    sections += task.report_sections(results)
    page = f"<!doctype html><meta charset='utf-8'><title>tunelab report</title><style>{STYLE}</style>" + "\n".join(
        sections
    )
    write_atomic(path, page)
    return path


def metrics_table(base: dict, final: dict, lower_is_better: frozenset = frozenset({"loss"})) -> str:
    rows = ["<table><tr><th>split</th><th>metric</th><th>base</th><th>fine-tuned</th><th>change</th></tr>"]
    for split, metrics in final.items():
        for metric in scalar_metrics(metrics):
            after = metrics.get(metric)
            before = base.get(split, {}).get(metric)
            change = "" if after is None or before is None else after - before
            better = change != "" and ((change < 0) if metric in lower_is_better else (change > 0))
            css = "" if change in ("", 0) else ("up" if better else "down")
            rows.append(
                f"<tr><td>{escape(split)}</td><td>{metric}</td><td>{_fmt(before)}</td>"
                f"<td>{_fmt(after)}</td><td class='{css}'>{_fmt(change, signed=True)}</td></tr>"
            )
    rows.append("</table>")
    return "\n".join(rows)


def _forgetting_section(results: dict) -> list[str]:
    """Retain sets before and after, and how far the features drifted."""
    sections = []
    if results.get("retain"):
        metric = retain_metric(results["retain"])
        methods = ", ".join(sorted(set(results.get("forgetting_methods", {})) - {"drift"})) or "none"
        rows = "".join(
            f"<tr><td>{escape(name)}</td><td>{_fmt(found['base'][metric])}</td>"
            f"<td>{_fmt(found['final'][metric])}</td><td class='down'>{_fmt(-found['forgetting'], True)}</td></tr>"
            for name, found in results["retain"].items()
        )
        series = {
            "base": {name: found["base"][metric] for name, found in results["retain"].items()},
            "fine-tuned": {name: found["final"][metric] for name, found in results["retain"].items()},
        }
        sections += [
            f"<h2>Forgetting</h2><p>{escape(metric)} on what the base model already did, through its own head, "
            f"before and after fine-tuning. Kept by: {escape(methods)}.</p>",
            f"<table><tr><th>retain set</th><th>base</th><th>fine-tuned</th><th>change</th></tr>{rows}</table>",
            image(plots.grouped_bars(series, metric, (0, 1.02)), "retain sets before and after"),
        ]
    if "drift" in results:
        cka = results["drift"]["validation_cka"]
        sections.append(
            f"<p><b>Feature drift</b>: linear CKA between the base model's and the fine-tuned model's features on "
            f"validation rows is {cka:.3f} (1 means unchanged up to rotation and scale).</p>"
        )
    return sections


def _groups_section(results: dict) -> list[str]:
    """Per-group accuracy, base and fine-tuned, for each split scored by group."""
    from tunelab.report.terminal import gap_line

    split_groups = {split: m["groups"] for split, m in results["final"].items() if "groups" in m}
    if not split_groups:
        return []
    column = results.get("group_column") or "group"
    sections = [f"<h2>By {escape(column)}</h2>"]
    for split, tuned in split_groups.items():
        base = results.get("base", {}).get(split, {}).get("groups")
        series = {"fine-tuned": {g: row["accuracy"] for g, row in tuned["by_group"].items()}}
        if base:
            series = {"base": {g: row["accuracy"] for g, row in base["by_group"].items()}} | series
        rows = "".join(
            f"<tr><td>{escape(group)}</td><td>{row['examples']}</td>"
            f"<td>{_fmt((base or {}).get('by_group', {}).get(group, {}).get('accuracy'))}</td>"
            f"<td>{_fmt(row['accuracy'])}</td><td>{_fmt(row['f1'])}</td></tr>"
            for group, row in tuned["by_group"].items()
        )
        sections += [
            f"<h3>{escape(split)}</h3><p>{escape(gap_line(tuned, base))}</p>",
            "<table><tr><th>group</th><th>examples</th><th>base accuracy</th><th>accuracy</th><th>f1</th></tr>"
            f"{rows}</table>",
            image(plots.grouped_bars(series, "accuracy", (0, 1.02)), f"accuracy by {column} ({split})"),
        ]
    return sections


def _summary(results: dict) -> str:
    params, best = results["parameters"], results["best"]
    items = {
        "model": results["model_source"],
        "strategy": results["strategy"] + _details(results.get("strategy_details", {})),
        "trainable parameters": f"{params['trainable']:,} of {params['total']:,} ({params['trainable_percent']:.2f}%)",
        "examples": ", ".join(f"{k} {v}" for k, v in results["examples"].items()),
        "training time": f"{results['train_seconds']:.1f} s, {results['steps']} steps",
        "peak memory": f"{results['peak_memory_mb']:.0f} MB",
        "best": f"validation {best['metric']} {_fmt(best['value'])} at step {best['step']}",
    }
    if results.get("stop_reason"):
        items["stopped"] = results["stop_reason"]
    if any(results.get("truncated", {}).values()):
        items["truncated"] = ", ".join(f"{k} {v}" for k, v in results["truncated"].items())
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in items.items())
    return f"<table>{rows}</table>"


def _details(details: dict) -> str:
    if not details:
        return ""
    return " (" + ", ".join(f"{key}: {value}" for key, value in details.items()) + ")"


def _gap(gap: dict) -> str:
    if not gap:
        return ""
    cells = ", ".join(f"{metric} {value:+.4f}" for metric, value in gap.items())
    return f"<p><b>Train minus validation</b> (overfitting shows as a large positive accuracy gap): {cells}</p>"


def image(png: str, description: str) -> str:
    return f"<img alt='{escape(description)}' title='{escape(description)}' src='data:image/png;base64,{png}'>"


def _fmt(value, signed: bool = False) -> str:
    if value is None or value == "":
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
