"""`tunelab demo`: transfer learning on digits in about a minute, and what it bought."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, stderr, stdout


def add_arguments(parser) -> None:
    parser.add_argument("--output", "-o", default="runs/demo", help="where the demo writes (default runs/demo)")
    parser.add_argument(
        "--draws",
        type=int,
        default=5,
        choices=range(1, 21),
        metavar="N",
        help="how many random draws of the few training images to average (default 5)",
    )
    common(parser)


def run(args) -> dict:
    from tunelab.recipes.demo import run_demo

    return run_demo(Path(args.output), stdout, stderr, draws=args.draws, show=not args.json)


COMMAND = Command("demo", "transfer learning on digits in about a minute", add_arguments, run)
