"""`tunelab predict`: a finished run's predictions on texts, a file or images."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, stdout
from tunelab.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="csv/tsv/jsonl/parquet/txt file, an image, or a folder of images")
    source.add_argument("--text", action="append", help="text to classify (repeatable)")
    parser.add_argument("--output", "-o", help="also write every prediction to a .jsonl/.json/.csv/.tsv file")
    common(parser)


def run(args) -> list[dict]:
    from tunelab.recipes.predict import run_prediction, write_predictions
    from tunelab.report.terminal import predictions_table

    if args.output and Path(args.output).exists():  # before the model loads, not after
        raise UserError(f"--output: {args.output} already exists; choose another file")
    rows = run_prediction(Path(args.run_dir), args.input, args.text)
    if args.output:
        write_predictions(rows, Path(args.output))
    if not args.json:
        stdout.print(predictions_table(rows))
        if args.output:
            stdout.print(f"{len(rows)} predictions written to {args.output}")
    return rows


COMMAND = Command("predict", "predict labels with a finished run", add_arguments, run)
