"""The range test's page: loss against learning rate, with the suggestions marked."""

from __future__ import annotations

from html import escape

from tunelab.report import plots
from tunelab.report.html import STYLE, image


def suggestion_lines(found: dict) -> list[str]:
    return [
        f"suggested learning rate: {found['suggested']:.3g} (the middle of the descent, "
        f"{found['descent'][0]:.3g} to {found['descent'][1]:.3g})",
        f"  steepest descent: {found['steepest']:.3g}; minimum / 10: {found['minimum_tenth']:.3g}",
        f"  range test: {len(found['rates'])} steps, {found['stopped']}",
    ]


def lr_find_page(found: dict) -> str:
    lines = "".join(f"<li>{escape(line.strip())}</li>" for line in suggestion_lines(found))
    return (
        f"<!doctype html><meta charset='utf-8'><title>tunelab lr-find</title><style>{STYLE}</style>"
        f"<h1>Learning-rate range test ({escape(found['strategy'])}, "
        f"{found['trainable_parameters']:,} trainable parameters)</h1><ul>{lines}</ul>"
        + image(plots.lr_range(found), "loss against learning rate")
        + "<p>The rate rises exponentially, one batch per step; the smoothed loss is a centred moving "
        "average. The descent runs from the last point on the starting plateau to the minimum; the "
        "suggestion is its middle on the log-rate axis (as fastai's valley).</p>"
    )
