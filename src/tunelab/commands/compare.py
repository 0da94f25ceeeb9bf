"""`tunelab compare`: several strategies on the same data, side by side."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from tunelab.commands.base import Command, common, output_options, overrides, stderr, stdout


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML run config")
    parser.add_argument(
        "--strategies",
        help="comma-separated, e.g. full,partial,lora (default: compare.strategies, else the eight main ones)",
    )
    overrides(parser)
    output_options(parser, "comparison directory (default: runs/<config name>-compare)", "comparison directory")
    common(parser)


def run(args) -> dict:
    from tunelab.config import dump_config, load_config
    from tunelab.recipes.compare import parse_strategies, run_compare
    from tunelab.report.compare import comparison_table, failure_lines, forgetting_table, measured_forgetting
    from tunelab.rundir import REPORT, claimed

    config = load_config(args.config, args.overrides)
    names = parse_strategies(args.strategies, config)
    output = Path(args.output or f"runs/{Path(args.config).stem}-compare")
    with claimed(output, args.overwrite, dump_config(config)):
        summary = run_compare(config, names, output, stderr, progress=not args.json)
    if not args.json:
        stdout.print(comparison_table(summary))
        if measured_forgetting(summary):
            stdout.print(forgetting_table(summary))
        for line in failure_lines(summary):
            stdout.print(f"[red]{escape(line)}[/]")
        stdout.print(f"comparison: {output / 'comparison.json'}   report: {output / REPORT}")
    return summary


COMMAND = Command("compare", "run several strategies on the same data and compare them", add_arguments, run)
