"""`tunelab tune`: an Optuna search over hyperparameters and strategies."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from tunelab.commands.base import Command, common, output_options, overrides, stderr, stdout
from tunelab.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML run config (its tune section holds the search space)")
    overrides(parser)
    parser.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold (tune.trials)")
    parser.add_argument("--storage", metavar="URL", help="an Optuna storage URL shared by several processes")
    output_options(parser, "study directory (default: runs/<config name>-tune)")
    common(parser)


def run(args) -> dict:
    from tunelab.config import dump_config, load_config
    from tunelab.recipes.tune import BEST, SUMMARY, run_tune
    from tunelab.report.tune import best_lines, trials_table
    from tunelab.rundir import REPORT, claimed

    config = load_config(args.config, args.overrides)
    trials = args.trials if args.trials is not None else config.tune.trials
    if trials < 1:
        raise UserError("--trials: must be 1 or more")
    output = Path(args.output or f"runs/{Path(args.config).stem}-tune")
    with claimed(output, config_text=dump_config(config), continuing=True):  # a rerun continues the study
        summary = run_tune(config, output, trials, args.storage, stderr, show=not args.json)
    if not args.json:
        stdout.print(trials_table(summary))
        for line in best_lines(summary, output / BEST):
            stdout.print(escape(line))
        stdout.print(f"study: {output / SUMMARY}   report: {output / REPORT}")
    return summary


COMMAND = Command("tune", "search hyperparameters and strategies with Optuna", add_arguments, run)
