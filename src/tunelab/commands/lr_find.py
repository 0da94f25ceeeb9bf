"""`tunelab lr-find`: a learning-rate range test that suggests a rate for a config."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, output_options, overrides, stderr, stdout


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML run config (its model, strategy and data are used)")
    overrides(parser)
    output_options(parser, "where lr_find.json goes (default: runs/<config name>-lr-find)")
    common(parser)


def run(args) -> dict:
    from tunelab.config import load_config
    from tunelab.recipes.lr_find import LR_FIND_JSON, LR_FIND_PAGE, run_lr_find
    from tunelab.report.lr_find import suggestion_lines

    config = load_config(args.config, args.overrides)
    output = Path(args.output or f"runs/{Path(args.config).stem}-lr-find")
    found = run_lr_find(config, output, stderr, show=not args.json)
    if not args.json:
        for line in suggestion_lines(found):
            stdout.print(line)
        stdout.print(f"curve: {output / LR_FIND_JSON}   report: {output / LR_FIND_PAGE}")
    return found


COMMAND = Command("lr-find", "learning-rate range test: suggest a rate for this config", add_arguments, run)
