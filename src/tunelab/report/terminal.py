"""Rich tables for the terminal: base vs fine-tuned per split, and predictions."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunelab.tasks import get_task


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def results_table(results: dict, title: str = "base model → fine-tuned") -> Table:
    """One row per split and stage, so it stays readable in an 80-column terminal."""
    table = Table(title=title)
    table.add_column("split", no_wrap=True, min_width=10)
    table.add_column("model")
    shown = get_task(results["task"]).table_metrics
    for metric in shown:
        table.add_column(metric, justify="right")
    base = results.get("base", {})
    for split, metrics in results["final"].items():
        if split in base:
            table.add_row(split, "[dim]base[/]", *(f"[dim]{_fmt(base[split].get(m))}[/]" for m in shown))
        table.add_row(
            "" if split in base else split,
            "[bold]tuned[/]",
            *(_fmt(metrics.get(m)) for m in shown),
            end_section=True,
        )
    return table


def metrics_only_table(metrics_by_split: dict, title: str, shown: tuple[str, ...]) -> Table:
    table = Table(title=title)
    table.add_column("split", no_wrap=True, min_width=10)
    for metric in shown:
        table.add_column(metric, justify="right")
    for split, metrics in metrics_by_split.items():
        table.add_row(split, *(_fmt(metrics.get(metric)) for metric in shown))
    return table


def run_summary_lines(results: dict) -> list[str]:
    params = results["parameters"]
    lines = [
        f"trainable parameters: {params['trainable']:,} of {params['total']:,} ({params['trainable_percent']:.2f}%)",
        f"trained {results['steps']} steps in {results['train_seconds']:.1f} s; "
        f"peak memory {results['peak_memory_mb']:.0f} MB",
    ]
    stages = results.get("strategy_details", {}).get("trainable_by_stage")
    if stages:
        shown = " → ".join(f"{count:,}" for count in stages)
        lines.append(f"unfrozen in {len(stages)} stages, trainable parameters: {shown}")
    if "saved_model_mb" in results:
        lines.append(f"saved model: {results['saved_model_mb']:.2f} MB")
    if "drift" in results:
        lines.append(
            f"feature drift from the base model: linear CKA {results['drift']['validation_cka']:.3f} "
            "on validation (1 = unchanged)"
        )
    lines += get_task(results["task"]).summary_lines(results)
    if results.get("stop_reason"):
        lines.append(results["stop_reason"])
    return lines


def groups_table(results: dict, split: str) -> Group | None:
    """Per-group accuracy and F1 of one split, base and fine-tuned, with the largest gap below."""
    tuned = results["final"].get(split, {}).get("groups")
    if not tuned:
        return None
    base = results.get("base", {}).get(split, {}).get("groups", {}).get("by_group", {})
    table = Table(title=f"{split} by {results.get('group_column') or 'group'}")
    for column in ("group", "examples", "base accuracy", "accuracy", "f1"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group, row in tuned["by_group"].items():
        before = base.get(group, {}).get("accuracy")
        table.add_row(
            escape(group), str(row["examples"]), f"[dim]{_fmt(before)}[/]", _fmt(row["accuracy"]), _fmt(row["f1"])
        )
    return Group(table, Text(gap_line(tuned, results.get("base", {}).get(split, {}).get("groups"))))


def retain_metric(retain: dict) -> str:
    """The metric retain sets are scored by: the task's own (accuracy of classes, entity F1 of
    tags); accuracy in results written before it was recorded."""
    return next(iter(retain.values())).get("metric", "accuracy")


def forgetting_table(results: dict) -> Table | None:
    """Each retain set before and after, beside what the new task gained."""
    retain = results.get("retain")
    if not retain:
        return None
    metric = retain_metric(retain)
    methods = ", ".join(sorted(set(results.get("forgetting_methods", {})) - {"drift"})) or "none"
    table = Table(title=f"what the base model knew (kept by: {methods})")
    for column in (f"task ({metric})", "base", "fine-tuned", "change"):
        table.add_column(column, justify="left" if column.startswith("task") else "right")
    split = "test" if "test" in results["final"] else "validation"
    before, after = results.get("base", {}).get(split, {}).get(metric), results["final"][split][metric]
    gain = "–" if before is None else f"{after - before:+.4f}"
    table.add_row(f"new task ({split})", _fmt(before), _fmt(after), gain, end_section=True)
    for name, found in retain.items():
        table.add_row(
            escape(name),
            _fmt(found["base"][metric]),
            _fmt(found["final"][metric]),
            f"{-found['forgetting']:+.4f}",
        )
    return table


def gap_line(tuned: dict, base: dict | None = None) -> str:
    """ "largest accuracy gap 0.12 (a 0.91 vs b 0.79), base 0.08" and the binary fairness differences."""
    gap = tuned["largest_gap"]["accuracy"]
    if gap["gap"] is None:
        return "one group only: no gap"
    by_group = tuned["by_group"]
    high, low = gap["highest"], gap["lowest"]
    line = (
        f"largest accuracy gap {gap['gap']:.4f} ({high} {by_group[high]['accuracy']:.4f} "
        f"vs {low} {by_group[low]['accuracy']:.4f})"
    )
    if base and base["largest_gap"]["accuracy"]["gap"] is not None:
        line += f", base model {base['largest_gap']['accuracy']['gap']:.4f}"
    for key, name in (
        ("demographic_parity_difference", "demographic parity"),
        ("equalized_odds_difference", "equalized odds"),
    ):
        if tuned.get(key) is not None:
            line += f"; {name} difference {tuned[key]:.4f}"
    return line


def predictions_table(rows: list[dict], limit: int = 20) -> Table:
    table = Table(
        title=f"predictions ({min(limit, len(rows))} of {len(rows)} shown)" if len(rows) > limit else "predictions"
    )
    hidden = ("probabilities", "tokens", "tags")  # too long for a cell: in --json and --output
    columns = [key for key in (rows[0] if rows else {"input": ""}) if key not in hidden]  # the task's own
    for column in columns:
        table.add_column(column, justify="left" if column in ("input", "label", "entities") else "right")
    for row in rows[:limit]:
        shown = str(row["input"])
        cells = [_cell(row[key]) for key in columns[1:]]
        table.add_row(shown if len(shown) <= 70 else shown[:67] + "...", *cells)
    return table


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):  # entities: text, type, character span and confidence
        return "\n".join(f"{e['text']} [{e['type']} {e['start']}:{e['end']} {e['confidence']:.2f}]" for e in value)
    return str(value)


def audit_table(report: dict) -> Table:
    """One row per split: size, balance and each kind of problem found."""
    table = Table(title="data audit", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True)
    headers = ("split", "rows", "classes", "imbalance", "empty", "dup", "near\ndup", "too\nlong", "bad\nimgs")
    for title in headers:
        table.add_column(title, justify="left" if title == "split" else "right", no_wrap=True)
    for role, found in report["splits"].items():
        ratio = found["imbalance_ratio"]
        table.add_row(
            role,
            str(found["rows"]),
            str(len(found["labels"])),
            "–" if ratio is None else f"{ratio:.1f}:1",
            str(found.get("empty_text", {}).get("count", "–")),
            str(found["exact_duplicates"]["extra_copies"]),
            str(found.get("near_duplicates", {}).get("count", "–")),
            str(found.get("tokens", {}).get("over_max_length", {}).get("count", "–")),
            str(len(found["undecodable"])) if "undecodable" in found else "–",
        )
    for role, found in report["leakage"].items():
        near = found.get("near", {}).get("rows", "–")
        # Leakage: rows of this split found in train, exactly ("dup") or nearly ("near dup").
        table.add_row(f"{role} ∩ train", "", "", "", "", str(found["exact"]["count"]), str(near), "", "")
    return table


def base_model_line(read: dict) -> str:
    """What the base model already gets right, before any training."""
    parts = [f"majority class {read['majority_class']:.3f}"]
    if "zero_shot" in read:
        parts.append(f"zero-shot by label names {read['zero_shot']:.3f}")
    if "linear_probe" in read:
        parts.append(f"linear probe {read['linear_probe']:.3f} (out-of-fold)")
    line = f"base model on {read['rows']} train rows: accuracy of " + ", ".join(parts)
    return line + (f"; zero-shot skipped: {read['zero_shot_skipped']}" if "zero_shot_skipped" in read else "")


def audit_groups_table(report: dict) -> Group | None:
    """Rows and labels per group in each split, with the probe's out-of-fold accuracy per group in train."""
    splits = {role: found["groups"] for role, found in report["splits"].items() if "groups" in found}
    if not splits:
        return None
    probe = report.get("label_errors", {}).get("groups")
    table = Table(title="groups", box=box.SIMPLE_HEAD)
    for column in ("split", "group", "rows", "labels", "probe accuracy"):
        table.add_column(column, justify="right" if column in ("rows", "probe accuracy") else "left")
    for role, groups in splits.items():
        for index, (group, found) in enumerate(groups.items()):
            accuracy = probe["by_group"].get(group, {}).get("accuracy") if probe and role == "train" else None
            labels = ", ".join(f"{label} {count}" for label, count in found["labels"].items())
            table.add_row(role if index == 0 else "", escape(group), str(found["rows"]), escape(labels), _fmt(accuracy))
        table.rows[-1].end_section = True
    return Group(table, Text("linear probe in train: " + gap_line(probe))) if probe else Group(table)


def suspects_table(found: dict, limit: int = 10) -> Table:
    title = (
        f"suspected label errors in train (probe on base-model features, out-of-fold accuracy "
        f"{found['probe_accuracy']:.3f} on {found['rows_probed']} rows)"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("row", "given", "suggested", "quality", "text"):
        table.add_column(column, justify="right" if column in ("row", "quality") else "left")
    for suspect in found["suspects"][:limit]:
        table.add_row(
            str(suspect["row"]), suspect["given"], suspect["suggested"], f"{suspect['quality']:.3f}",
            escape(suspect["text"][:60]),
        )  # fmt: skip
    return table


def domain_gap_line(gap: dict) -> str:
    """The domain gap in one sentence, for the terminal and the audit page alike."""
    return (
        f"domain gap to {gap['reference']}: a probe on the base model's features tells train from it with "
        f"ROC-AUC {gap['classifier_auc']:.3f} (0.5: the same distribution; 1.0: fully apart); centroid cosine "
        f"distance {gap['centroid_cosine_distance']:.3f}; rows: {gap['rows'][0]} train, {gap['rows'][1]} reference"
    )


def compression_table(found: dict, before: str, after: str) -> Table:
    """The original and the compressed model side by side, with the ratio."""
    table = Table(title=f"{before} → {after} ({found['method']}; CPU, {found[after]['threads']} threads)")
    for column in ("", before, after, "ratio"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [  # the ratio reads "times smaller / faster": higher is better on every row
        ("weights on disk (MB)", "size_mb", "{:.2f}", False),
        ("parameters", "parameters", "{:,}", False),
        ("latency, batch 1 (ms)", "batch_1_ms", "{:.2f}", False),
        ("latency, batch 32 (ms)", "batch_32_ms", "{:.1f}", False),
        ("throughput (rows/s)", "rows_per_second", "{:.0f}", True),
    ]
    for label, key, shape, higher_is_better in rows:
        a, b = found[before][key], found[after][key]
        ratio = (b / a if higher_is_better else a / b) if a and b else None
        table.add_row(label, shape.format(a), shape.format(b), "–" if ratio is None else f"{ratio:.2f}x")
    metric = found.get("metric", "accuracy")  # the run's own: accuracy, entity F1, Spearman
    for split in ("validation", "test"):
        if split in found[after] and found[before][split].get(metric) is not None:
            a, b = found[before][split][metric], found[after][split][metric]
            table.add_row(f"{split} {metric}", f"{a:.4f}", f"{b:.4f}", f"{100 * (b - a):+.1f} pts")
    return table
