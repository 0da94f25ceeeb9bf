"""`tunelab train`: fine-tune from a YAML config, or resume an interrupted run."""

from __future__ import annotations

import sys
from pathlib import Path

from tunelab.commands.base import Command, common, is_main_process, output_options, overrides, showing, stderr, stdout
from tunelab.errors import UserError
from tunelab.lock import holding


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint")
    parser.add_argument(
        "--restart", action="store_true", help="with --resume: start that run again from step 0 with its config.yaml"
    )
    overrides(parser)
    output_options(parser, "run directory (default: output_dir, else runs/<config name>)", "run directory")
    common(parser)


def run(args) -> dict:
    from tunelab.builder.fresh import train_into
    from tunelab.config import load_config

    if args.resume:
        return _resume(args)
    if args.restart:
        raise UserError("train --restart goes with --resume RUN_DIR: it starts that run again from step 0")
    if not args.config:
        raise UserError("train: give a config file (CONFIG) or --resume RUN_DIR")
    config = load_config(args.config, args.overrides)
    output = args.output or config.output_dir or f"runs/{Path(args.config).stem}"
    run_dir, results = train_into(config, output, args.overwrite, stderr, progress=showing(args), interruptible=True)
    return print_training(args, run_dir, results)


def _resume(args) -> dict:
    from tunelab.builder import run_training
    from tunelab.config import load_config
    from tunelab.resume import check_config_unchanged, forget_progress
    from tunelab.rundir import CONFIG, RESULTS

    if args.config or args.overrides or args.output or args.overwrite:
        raise UserError(
            "train --resume: the run's own config.yaml is used; drop CONFIG, --set, --output and --overwrite"
        )
    run_dir = Path(args.resume)
    with holding(run_dir, is_main_process()):
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"--resume: {run_dir} is not a tunelab run directory (no {CONFIG})")
        if (run_dir / RESULTS).exists():
            raise UserError(f"--resume: {run_dir} already finished (it has {RESULTS}); nothing to resume")
        config = load_config(run_dir / CONFIG)
        if args.restart:
            if is_main_process():
                forget_progress(run_dir)
        else:
            check_config_unchanged(run_dir, config)
        results = run_training(
            config, run_dir, stderr, progress=showing(args), resume=not args.restart, interruptible=True
        )
    return print_training(args, run_dir, results)


def print_training(args, run_dir: Path, results: dict) -> dict:
    """A finished run's tables and where it lies (main process only); a diverged run says why."""
    from tunelab.report import terminal
    from tunelab.rundir import REPORT

    if not args.json and is_main_process():
        stdout.print(terminal.results_table(results))
        retained = terminal.forgetting_table(results)
        if retained is not None:
            stdout.print(retained)
        for split in results["final"]:
            table = terminal.groups_table(results, split)
            if table is not None:
                stdout.print(table)
        for line in terminal.run_summary_lines(results):
            stdout.print(line)
        stdout.print(f"run directory: {run_dir}   report: {run_dir / REPORT}")
    if results.get("diverged") and is_main_process():
        print(f"error: {results['stop_reason']}", file=sys.stderr)
    return {"run_dir": str(run_dir), **results}


COMMAND = Command("train", "fine-tune from a YAML config", add_arguments, run)
