"""The tagged-data audit (``tunelab.data.tag_audit``) in the terminal and as audit.html."""

from __future__ import annotations

from html import escape
from pathlib import Path

from rich import box
from rich.table import Table

from tunelab.io import write_atomic
from tunelab.report import plots
from tunelab.report.html import STYLE, image

# Sentences, words, tag scheme, entities, tags no scheme allows after the one before, duplicate
# sentences, duplicates tagged differently, near-duplicate pairs, sentences over max_length.
COLUMNS = (
    "sent-\nences", "words", "scheme", "enti-\nties", "bad\ntrans.", "dup", "diff.\ntags", "near\ndup", "too\nlong",
)  # fmt: skip


def _cells(found: dict) -> list[str]:
    tokens = found.get("tokens")
    return [
        str(found["rows"]), str(found["words"]), found["scheme"].upper(), str(sum(found["entities"].values())),
        str(found["invalid_transitions"]["count"]), str(found["exact_duplicates"]["extra_copies"]),
        str(found["conflicting_duplicates"]["groups"]), str(found["near_duplicates"]["count"]),
        str(tokens["over_max_length"]["count"]) if tokens else "–",
    ]  # fmt: skip


def tag_audit_tables(report: dict) -> list[Table]:
    """The splits, the sentences of validation/test also in train, then entities and tags per split."""
    splits = Table(title="tagged-data audit", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True)
    for title in ("split", *COLUMNS):
        splits.add_column(title, justify="left" if title in ("split", "scheme") else "right", no_wrap=True)
    for role, found in report["splits"].items():
        splits.add_row(role, *_cells(found))
    tables = [splits]
    if report["leakage"]:
        leaks = Table(title="sentences also in train", box=box.SIMPLE_HEAD, padding=(0, 1))
        for title in ("split", "exactly", "nearly"):
            leaks.add_column(title, justify="left" if title == "split" else "right")
        for role, found in report["leakage"].items():
            leaks.add_row(role, str(found["exact"]["count"]), str(found["near"]["rows"]))
        tables.append(leaks)
    return [*tables, _counts_table(report, "entities", "entities per type"), _counts_table(report, "tags", "tags")]


def _counts_table(report: dict, key: str, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True)
    table.add_column(key[:-1] if key == "tags" else "type")
    for role in report["splits"]:
        table.add_column(role, justify="right")
    for name in _names(report, key):
        table.add_row(escape(name), *(str(found[key].get(name, 0)) for found in report["splits"].values()))
    return table


def _names(report: dict, key: str) -> list[str]:
    names = []
    for found in report["splits"].values():
        names += [name for name in found[key] if name not in names]
    return names


def write_tag_audit_page(report: dict, path: Path) -> Path:
    splits = report["splits"]
    sections = ["<h1>tunelab data audit: tagged sentences</h1>"]
    if report["warnings"]:
        items = "".join(f"<li>{escape(line)}</li>" for line in report["warnings"])
        sections.append(f"<h2>Warnings</h2><ul>{items}</ul>")
    head = "<tr><th>split</th>" + "".join(f"<th>{escape(c)}</th>" for c in COLUMNS) + "</tr>"
    body = "".join(_row(role, *_cells(found)) for role, found in splits.items())
    sections.append(f"<h2>Splits</h2><table>{head}{body}</table>")
    if report["leakage"]:
        leaks = "".join(
            _row(role, found["exact"]["count"], found["near"]["rows"]) for role, found in report["leakage"].items()
        )
        sections.append(f"<h2>Sentences also in train</h2><table>{_row('split', 'exactly', 'nearly')}{leaks}</table>")
    sections.append("<h2>Distributions</h2><div class='grid'>")
    sections.append(image(plots.grouped_bars({r: f["entities"] for r, f in splits.items()}, "entities"), "entities"))
    tags = {role: {t: n for t, n in found["tags"].items() if t != "O"} for role, found in splits.items()}
    sections.append(image(plots.grouped_bars(tags, "words"), "tags other than O"))
    histograms = {role: found["tokens"]["histogram"] for role, found in splits.items() if "tokens" in found}
    if histograms:
        max_length = next(found["tokens"]["max_length"] for found in splits.values() if "tokens" in found)
        sections.append(image(plots.length_histograms(histograms, max_length), "sub-tokens per sentence"))
    sections.append("</div>")
    sections += _examples(report)
    page = f"<!doctype html><meta charset='utf-8'><title>tunelab audit</title><style>{STYLE}</style>"
    write_atomic(path, page + "\n".join(sections))
    return path


def _row(*cells) -> str:
    return "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in cells) + "</tr>"


def _examples(report: dict) -> list[str]:
    """Where the first few findings of each kind stand, split by split."""
    out = []
    for role, found in report["splits"].items():
        items = [f"{e['at']}: {e['pair']}" for e in found["invalid_transitions"]["examples"]]
        items += [f"tagged differently: {', '.join(g)}" for g in found["conflicting_duplicates"]["examples"]]
        items += [f"duplicates: {', '.join(g)}" for g in found["exact_duplicates"]["examples"]]
        items += [f"near duplicates: {a} and {b} ({s:.2f})" for a, b, s in found["near_duplicates"]["examples"]]
        long = found.get("tokens", {}).get("over_max_length", {}).get("rows", [])
        items += [f"longer than max_length: {place}" for place in long]
        leak = report["leakage"].get(role)
        if leak:
            items += [f"also in train: {p}" for p in leak["exact"]["rows"]]
            items += [f"near a train sentence: {a} ~ train {b} ({s:.2f})" for a, b, s in leak["near"]["examples"]]
        if items:
            out.append(f"<h2>Where ({escape(role)}, {escape(found['path'])})</h2><ul>"
                       + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>")  # fmt: skip
    return out
