"""Token classification's own report parts: entity scores per type, base beside fine-tuned."""

from __future__ import annotations

from html import escape


def per_type_rows(per_type: dict, base: dict | None) -> list[tuple]:
    """(type, precision, recall, F1, base F1 or None, support) per entity type."""
    base = base or {}
    return [
        (kind, s["precision"], s["recall"], s["f1"], base.get(kind, {}).get("f1"), s["support"])
        for kind, s in per_type.items()
    ]


def per_type_lines(results: dict) -> list[str]:
    """The terminal's per-type table of the validation split (test too, when there is one)."""
    lines = []
    for split in ("validation", "test"):
        per_type = results["final"].get(split, {}).get("per_type")
        if not per_type:
            continue
        base = results.get("base", {}).get(split, {}).get("per_type")
        lines.append(f"entities by type ({split}):    precision  recall      F1  base F1   spans")
        for kind, precision, recall, f1, base_f1, support in per_type_rows(per_type, base):
            shown = "–" if base_f1 is None else f"{base_f1:.4f}"
            lines.append(f"  {kind:<28}{precision:9.4f} {recall:7.4f} {f1:7.4f} {shown:>8} {support:7d}")
    return lines


def per_type_html(per_type: dict, base: dict | None) -> str:
    head = "<tr><th>type</th><th>precision</th><th>recall</th><th>F1</th><th>base F1</th><th>support</th></tr>"
    body = "".join(
        f"<tr><td>{escape(kind)}</td><td>{p:.4f}</td><td>{r:.4f}</td><td>{f:.4f}</td>"
        f"<td>{'–' if b is None else f'{b:.4f}'}</td><td>{n}</td></tr>"
        for kind, p, r, f, b, n in per_type_rows(per_type, base)
    )
    return f"<table>{head}{body}</table>"
