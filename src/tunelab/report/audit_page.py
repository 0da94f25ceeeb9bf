"""audit.html: the audit's findings as one self-contained page with plots."""

from __future__ import annotations

from html import escape
from pathlib import Path

from tunelab.io import write_atomic
from tunelab.report import plots
from tunelab.report.html import STYLE, image
from tunelab.report.terminal import base_model_line, domain_gap_line, gap_line


def write_audit_page(report: dict, path: Path) -> Path:
    if report.get("task") == "token-classification":
        from tunelab.report.tag_audit import write_tag_audit_page

        return write_tag_audit_page(report, path)
    splits = report["splits"]
    sections = ["<h1>tunelab data audit</h1>"]
    if report["warnings"]:
        items = "".join(f"<li>{escape(line)}</li>" for line in report["warnings"])
        sections.append(f"<h2>Warnings</h2><ul>{items}</ul>")
    sections.append("<h2>Splits</h2>" + _splits_table(splits))
    if report["leakage"]:
        rows = "".join(
            f"<tr><td>{escape(role)}</td><td>{found['exact']['count']}</td>"
            f"<td>{found.get('near', {}).get('rows', '–')}</td></tr>"
            for role, found in report["leakage"].items()
        )
        sections.append(
            "<h2>Leakage into train</h2><table><tr><th>split</th><th>exact</th><th>near</th></tr>" + rows + "</table>"
        )
    sections.append("<h2>Distributions</h2><div class='grid'>")
    sections.append(image(plots.label_counts({role: found["labels"] for role, found in splits.items()}), "labels"))
    histograms = {role: found["tokens"]["histogram"] for role, found in splits.items() if "tokens" in found}
    if histograms:
        max_length = next(found["tokens"]["max_length"] for found in splits.values() if "tokens" in found)
        sections.append(image(plots.length_histograms(histograms, max_length), "token lengths"))
    sections.append("</div>")
    sections += _groups_section(report)
    if "base_model" in report:
        sections.append(
            f"<h2>What the base model already knows</h2><p>{escape(base_model_line(report['base_model']))}</p>"
        )
    gap = report.get("domain_gap", {})
    if "classifier_auc" in gap:
        sections.append(f"<h2>Domain gap</h2><p>{escape(domain_gap_line(gap))}</p>")
    errors = report.get("label_errors", {})
    if errors.get("suspects"):
        sections.append(
            f"<h2>Suspected label errors in train</h2><p>Out-of-fold probe on the base model's features: "
            f"accuracy {errors['probe_accuracy']:.3f} on {errors['rows_probed']} rows. Lowest label quality first."
            "</p><table><tr><th>row</th><th>given</th><th>suggested</th><th>quality</th><th>text</th></tr>"
            + "".join(
                f"<tr><td>{s['row']}</td><td>{escape(s['given'])}</td><td>{escape(s['suggested'])}</td>"
                f"<td>{s['quality']:.3f}</td><td>{escape(s['text'])}</td></tr>"
                for s in errors["suspects"]
            )
            + "</table>"
        )
    page = f"<!doctype html><meta charset='utf-8'><title>tunelab audit</title><style>{STYLE}</style>"
    write_atomic(path, page + "\n".join(sections))
    return path


def _splits_table(splits: dict) -> str:
    header = "<tr><th>split</th><th>rows</th><th>labels</th><th>imbalance</th><th>empty</th>"
    header += "<th>exact duplicates</th><th>near-duplicate pairs</th><th>over max_length</th><th>bad images</th></tr>"
    rows = []
    for role, found in splits.items():
        ratio = found["imbalance_ratio"]
        cells = [
            role,
            found["rows"],
            ", ".join(f"{label} {count}" for label, count in found["labels"].items()),
            "–" if ratio is None else f"{ratio:.1f}:1",
            found.get("empty_text", {}).get("count", "–"),
            found["exact_duplicates"]["extra_copies"],
            found.get("near_duplicates", {}).get("count", "–"),
            found.get("tokens", {}).get("over_max_length", {}).get("count", "–"),
            len(found["undecodable"]) if "undecodable" in found else "–",
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in cells) + "</tr>")
    return "<table>" + header + "".join(rows) + "</table>"


def _groups_section(report: dict) -> list[str]:
    """Rows per group and label in each split; the probe's accuracy per group in train."""
    splits = {role: found["groups"] for role, found in report["splits"].items() if "groups" in found}
    if not splits:
        return []
    sections = ["<h2>Groups</h2><div class='grid'>"]
    for role, groups in splits.items():
        counts = {}
        for group, found in groups.items():
            for label, count in found["labels"].items():
                counts.setdefault(label, {})[group] = count
        sections.append(image(plots.grouped_bars(counts, "rows"), f"rows per group and label ({role})"))
    probe = report.get("label_errors", {}).get("groups")
    if probe:
        accuracy = {group: row["accuracy"] for group, row in probe["by_group"].items()}
        sections.append(image(plots.grouped_bars({"probe": accuracy}, "accuracy", (0, 1.02)), "probe accuracy"))
    sections.append("</div>")
    if probe:
        sections.append(f"<p>Linear probe on the base model, out-of-fold, in train: {escape(gap_line(probe))}</p>")
    return sections
