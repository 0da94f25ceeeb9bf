"""`tunelab quantize`: an int8 copy of a run's model, measured against the float one."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, output_options, stderr, stdout
from tunelab.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument(
        "--method",
        choices=("dynamic", "static"),
        default="dynamic",
        help="dynamic: int8 linear weights (transformers); static: calibrated int8 (CNNs)",
    )
    output_options(parser, "new run directory (default: RUN_DIR-int8-METHOD)", "output directory")
    parser.add_argument(
        "--calibration-rows",
        type=int,
        default=256,
        metavar="N",
        help="train rows that calibrate static quantization (default 256)",
    )
    common(parser)


def run(args) -> dict:
    from tunelab.recipes.quantize import run_quantize
    from tunelab.report.terminal import compression_table
    from tunelab.rundir import claimed

    if args.calibration_rows < 1:
        raise UserError("--calibration-rows: must be 1 or more")
    run_dir = Path(args.run_dir)
    output = Path(args.output or f"{run_dir}-int8-{args.method}")
    if output.resolve() == run_dir.resolve():
        raise UserError("quantize: --output is the run itself; the int8 copy goes into a folder of its own")
    with claimed(output, args.overwrite):
        results = run_quantize(run_dir, args.method, output, args.calibration_rows, stderr, show=not args.json)
    if not args.json:
        stdout.print(compression_table(results["compression"], "float", "int8"))
        stdout.print(f"run directory: {output}")
    return results


COMMAND = Command("quantize", "an int8 copy of a run's model, measured against the float one", add_arguments, run)
