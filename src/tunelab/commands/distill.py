"""`tunelab distill`: a smaller student trained from a finished run (the teacher)."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, output_options, overrides, showing, stderr, stdout


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="the teacher: a finished run")
    parser.add_argument(
        "--student",
        required=True,
        metavar="SPEC",
        help="layers:N (the teacher's blocks, every k-th kept) or any model.source",
    )
    overrides(parser)
    output_options(parser, "the student's run directory (default: RUN_DIR-distilled)", "output directory")
    common(parser)


def run(args) -> dict:
    from tunelab.recipes.distill import run_distill
    from tunelab.report.terminal import compression_table
    from tunelab.rundir import REPORT, claimed

    output = Path(args.output or f"{Path(args.run_dir)}-distilled")
    with claimed(output, args.overwrite):
        results = run_distill(Path(args.run_dir), args.student, args.overrides, output, stderr, showing(args))
    if not args.json:
        stdout.print(compression_table(results["distillation"], "teacher", "student"))
        stdout.print(f"run directory: {output}   report: {output / REPORT}")
    return results


COMMAND = Command("distill", "train a smaller student from a finished run (the teacher)", add_arguments, run)
