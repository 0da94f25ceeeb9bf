"""`tunelab continual`: every method learns the whole task sequence; the accuracy matrices, average
accuracy, backward and forward transfer side by side, as a table, continual.json and a report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.builder.runtime import make_accelerator, quiet_libraries
from tunelab.config import RunConfig
from tunelab.continual.sequence import Sequence
from tunelab.continual.tasks import prepare_tasks, read_tasks
from tunelab.errors import UserError
from tunelab.io import write_atomic, write_json
from tunelab.rundir import REPORT

SUMMARY = "continual.json"


def run_continual(config: RunConfig, output: Path, console: Console, show: bool) -> dict:
    quiet_libraries()
    accelerator = make_accelerator(config.train)
    if accelerator.num_processes > 1:
        raise UserError("continual: runs in one process; launch it without torchrun or accelerate launch")
    tasks = read_tasks(config)
    results = {"scenario": config.continual.scenario, "tasks": [task.name for task in tasks], "methods": {}}
    for method in config.continual.methods:
        if show:
            console.print(f"[bold]{method}[/]: {len(tasks)} tasks, {config.continual.scenario}-incremental")
        sequence = Sequence(config, method, tasks, output / method.replace("+", "-"), accelerator)
        if tasks[0].datasets is None:
            prepare_tasks(tasks, sequence.loaded)
        results["methods"][method] = sequence.run(console, show)
    write_json(output / SUMMARY, results)
    from tunelab.report.continual import continual_page

    write_atomic(output / REPORT, continual_page(results))
    return results
