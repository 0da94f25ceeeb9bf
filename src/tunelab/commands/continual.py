"""`tunelab continual`: tasks learned one after another, and what each method keeps."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.commands.base import Command, common, output_options, overrides, stderr, stdout
from tunelab.errors import UserError
from tunelab.lock import holding


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config with a continual section")
    overrides(parser)
    parser.add_argument("--methods", help="comma-separated, e.g. naive,ewc,replay (default: continual.methods)")
    output_options(parser, "results directory (default: runs/<config name>-continual)", "results directory")
    parser.add_argument("--resume", metavar="DIR", help="finish an interrupted continual run")
    common(parser)


def run(args) -> dict:
    from tunelab.config import comma_list, dump_config, load_config
    from tunelab.recipes.continual import SUMMARY, run_continual
    from tunelab.report.continual import matrix_table, summary_table
    from tunelab.rundir import CONFIG, REPORT, claimed

    if args.resume:
        if args.config or args.overrides or args.output or args.overwrite or args.methods:
            raise UserError("continual --resume: the run's own config.yaml is used; drop the other options")
        output = Path(args.resume)
        with holding(output):
            if not (output / CONFIG).is_file():
                raise UserError(f"--resume: {output} is not a tunelab continual directory (no {CONFIG})")
            config = load_config(output / CONFIG)
            results = run_continual(config, output, stderr, show=not args.json)
    else:
        if not args.config:
            raise UserError("continual: give a config file (CONFIG) or --resume DIR")
        overrides = list(args.overrides)
        if args.methods is not None:
            overrides.append(f"continual.methods={json.dumps(comma_list(args.methods, '--methods'))}")
        config = load_config(args.config, overrides)
        if config.continual is None:
            raise UserError(f"{args.config}: no continual section (continual: {{benchmark: split-digits}})")
        output = Path(args.output or f"runs/{Path(args.config).stem}-continual")
        with claimed(output, args.overwrite, dump_config(config)):
            results = run_continual(config, output, stderr, show=not args.json)
    if not args.json:
        for method, found in results["methods"].items():
            stdout.print(matrix_table(method, found))
        stdout.print(summary_table(results))
        stdout.print(f"results: {output / SUMMARY}   report: {output / REPORT}")
    return results


COMMAND = Command("continual", "learn tasks one after another; measure what each method keeps", add_arguments, run)
