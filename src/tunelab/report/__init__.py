"""A self-contained HTML report: metric tables and matplotlib plots embedded as PNG."""

from tunelab.report.html import write_report

__all__ = ["write_report"]
