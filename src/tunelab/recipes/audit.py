"""`tunelab audit`: check a config's data, write audit.json and audit.html."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.builder.runtime import quiet_libraries
from tunelab.config import RunConfig
from tunelab.data.audit import audit
from tunelab.errors import UserError
from tunelab.io import write_json
from tunelab.models.loading import load_tokenizer
from tunelab.tasks import get_task
from tunelab.tasks.base import Task

AUDIT_JSON = "audit.json"
AUDIT_PAGE = "audit.html"


def run_audit(
    config: RunConfig, output: Path, probe_rows: int, reference: str | None, console: Console, show: bool
) -> dict:
    quiet_libraries()
    task = get_task(config)
    own = type(task).audit is not Task.audit  # a task that audits its data its own way (tags)
    if not task.has_classes and not own:
        raise UserError(f"audit: checks class labels (balance, label issues, leaks); task {task.name} has none")
    if own and reference:
        raise UserError(f"--reference: the domain-gap probe reads class data; task {task.name} has its own audit")
    tokenizer = load_tokenizer(config) if task.reads(config) == "text" else None
    report = task.audit(config, tokenizer)
    if report is None:
        features = _feature_extractor(config, console, show) if tokenizer is not None and probe_rows > 0 else None
        report = audit(config, tokenizer, features, probe_rows, reference)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output: cannot create {output}: {error.strerror or error}") from None
    write_json(output / AUDIT_JSON, report)
    from tunelab.report.audit_page import write_audit_page

    write_audit_page(report, output / AUDIT_PAGE)
    return report


def _feature_extractor(config: RunConfig, console: Console, show: bool):
    """texts -> the base model's mean-pooled features, with a progress bar; the model is built once."""
    from rich.progress import Progress

    from tunelab.data.label_issues import text_features
    from tunelab.data.labels import LabelMap
    from tunelab.models import load_model

    loaded = None

    def extract(texts: list[str]):
        nonlocal loaded
        loaded = loaded or load_model(config, LabelMap(("a", "b")))  # the head is unused
        with Progress(console=console, disable=not show, transient=True) as progress:
            task = progress.add_task("base-model features for the label-error probe", total=len(texts))
            return text_features(loaded, texts, config.data.max_length, advance=lambda n: progress.advance(task, n))

    return extract
