"""`tunelab eval`: a finished run scored again, on its own splits or on another labelled file."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, showing, stdout


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--data", help="a labelled file (or image folder) to evaluate instead of the run's splits")
    common(parser)


def run(args) -> dict:
    from tunelab.recipes.evaluate import run_evaluation
    from tunelab.report.terminal import groups_table, metrics_only_table

    metrics, task = run_evaluation(Path(args.run_dir), args.data, progress=showing(args))
    if not args.json:
        stdout.print(metrics_only_table(metrics, f"evaluation of {args.run_dir}", task.table_metrics))
        for split in metrics:
            table = groups_table({"final": metrics}, split)
            if table is not None:
                stdout.print(table)
    return metrics


COMMAND = Command("eval", "evaluate a finished run", add_arguments, run)
