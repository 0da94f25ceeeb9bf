"""`tunelab export`: a run's model as a standalone folder (Hugging Face, sentence-transformers, ONNX)."""

from __future__ import annotations

from pathlib import Path

from tunelab.commands.base import Command, common, stdout


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--output", "-o", required=True, help="folder to write (must not exist)")
    parser.add_argument("--merge", action="store_true", help="fold a LoRA/IA3 adapter into the base weights")
    parser.add_argument(
        "--format",
        choices=("hf", "sentence-transformers", "onnx"),
        default="hf",
        help="hf (default): a Hugging Face folder; sentence-transformers: a pooled run as one; "
        "onnx: model.onnx checked with onnxruntime",
    )
    common(parser)


def run(args) -> dict:
    from tunelab.recipes.export import run_export

    result = run_export(Path(args.run_dir), Path(args.output), args.merge, args.format)
    if not args.json:
        stdout.print(f"wrote {result['output']} ({result['size_mb']:.1f} MB, {result['kind']})")
        if "latency_ms" in result:
            latency = result["latency_ms"]
            stdout.print(
                f"onnxruntime logits match PyTorch to {result['max_abs_difference']:.2g}; one input: "
                f"{latency['onnxruntime']:.2f} ms onnxruntime, {latency['pytorch']:.2f} ms PyTorch"
            )
    return result


COMMAND = Command("export", "write a run's model as a standalone model folder", add_arguments, run)
