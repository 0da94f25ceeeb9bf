"""The command line: parse, call a recipe, print. One function per command."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunelab.collector import set_up_uncollected
from tunelab.errors import UserError
from tunelab.lock import holding

stdout = Console()
stderr = Console(stderr=True)
# Everything str.splitlines() breaks at, escaped: a user's key, path or label may hold any of them.
LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tunelab", description="Fine-tune pretrained PyTorch models and measure the result.")
    from tunelab import __version__

    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser("train", help="fine-tune from a YAML config")
    train.add_argument("config", nargs="?", help="YAML run config")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint")
    train.add_argument(
        "--restart", action="store_true", help="with --resume: start that run again from step 0 with its config.yaml"
    )
    _overrides(train)
    train.add_argument("--output", "-o", help="run directory (default: output_dir, else runs/<config name>)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    _common(train)

    compare = commands.add_parser("compare", help="run several strategies on the same data and compare them")
    compare.add_argument("config", help="YAML run config")
    compare.add_argument(
        "--strategies",
        help="comma-separated, e.g. full,partial,lora (default: compare.strategies, else the eight main ones)",
    )
    _overrides(compare)
    compare.add_argument("--output", "-o", help="comparison directory (default: runs/<config name>-compare)")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing comparison directory")
    _common(compare)

    lr_find = commands.add_parser("lr-find", help="learning-rate range test: suggest a rate for this config")
    lr_find.add_argument("config", help="YAML run config (its model, strategy and data are used)")
    _overrides(lr_find)
    lr_find.add_argument("--output", "-o", help="where lr_find.json goes (default: runs/<config name>-lr-find)")
    _common(lr_find)

    quantize = commands.add_parser("quantize", help="an int8 copy of a run's model, measured against the float one")
    quantize.add_argument("run_dir")
    quantize.add_argument(
        "--method",
        choices=("dynamic", "static"),
        default="dynamic",
        help="dynamic: int8 linear weights (transformers); static: calibrated int8 (CNNs)",
    )
    quantize.add_argument("--output", "-o", help="new run directory (default: RUN_DIR-int8-METHOD)")
    quantize.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    quantize.add_argument(
        "--calibration-rows",
        type=int,
        default=256,
        metavar="N",
        help="train rows that calibrate static quantization (default 256)",
    )
    _common(quantize)

    distill = commands.add_parser("distill", help="train a smaller student from a finished run (the teacher)")
    distill.add_argument("run_dir", help="the teacher: a finished run")
    distill.add_argument(
        "--student",
        required=True,
        metavar="SPEC",
        help="layers:N (the teacher's blocks, every k-th kept) or any model.source",
    )
    _overrides(distill)
    distill.add_argument("--output", "-o", help="the student's run directory (default: RUN_DIR-distilled)")
    distill.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    _common(distill)

    tune = commands.add_parser("tune", help="search hyperparameters and strategies with Optuna")
    tune.add_argument("config", help="YAML run config (its tune section holds the search space)")
    _overrides(tune)
    tune.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold (tune.trials)")
    tune.add_argument("--storage", metavar="URL", help="an Optuna storage URL shared by several processes")
    tune.add_argument("--output", "-o", help="study directory (default: runs/<config name>-tune)")
    _common(tune)

    continual = commands.add_parser("continual", help="learn tasks one after another; measure what each method keeps")
    continual.add_argument("config", nargs="?", help="YAML run config with a continual section")
    _overrides(continual)
    continual.add_argument("--methods", help="comma-separated, e.g. naive,ewc,replay (default: continual.methods)")
    continual.add_argument("--output", "-o", help="results directory (default: runs/<config name>-continual)")
    continual.add_argument("--overwrite", action="store_true", help="replace an existing results directory")
    continual.add_argument("--resume", metavar="DIR", help="finish an interrupted continual run")
    _common(continual)

    audit = commands.add_parser("audit", help="check the data before training: balance, duplicates, leakage, ...")
    audit.add_argument("config", nargs="?", help="YAML run config (its data section is audited)")
    audit.add_argument("--data", metavar="FILE", help="audit this train file (or image folder) without a config")
    audit.add_argument("--validation", metavar="FILE", help="with --data: a validation file to check for leakage")
    audit.add_argument("--test", metavar="FILE", help="with --data: a test file to check for leakage")
    audit.add_argument("--model", metavar="SOURCE", help="with --data: the model whose tokenizer and features to use")
    _overrides(audit)
    audit.add_argument("--output", "-o", help="where audit.json goes (default: runs/<config name>-audit)")
    audit.add_argument(
        "--reference",
        metavar="FILE",
        help="texts like those the base model knows (same text column): measures the domain gap to train",
    )
    audit.add_argument(
        "--probe-rows",
        type=int,
        default=10_000,
        metavar="N",
        help="train rows the label-error probe scores (default 10000; 0 skips it)",
    )
    _common(audit)

    export = commands.add_parser("export", help="write a run's model as a standalone model folder")
    export.add_argument("run_dir")
    export.add_argument("--output", "-o", required=True, help="folder to write (must not exist)")
    export.add_argument("--merge", action="store_true", help="fold a LoRA/IA3 adapter into the base weights")
    export.add_argument(
        "--format",
        choices=("hf", "sentence-transformers", "onnx"),
        default="hf",
        help="hf (default): a Hugging Face folder; sentence-transformers: a pooled run as one; "
        "onnx: model.onnx checked with onnxruntime",
    )
    _common(export)

    evaluate = commands.add_parser("eval", help="evaluate a finished run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="a labelled file (or image folder) to evaluate instead of the run's splits")
    _common(evaluate)

    predict = commands.add_parser("predict", help="predict labels with a finished run")
    predict.add_argument("run_dir")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="csv/tsv/jsonl/parquet/txt file, an image, or a folder of images")
    source.add_argument("--text", action="append", help="text to classify (repeatable)")
    predict.add_argument("--output", "-o", help="also write every prediction to a .jsonl/.json/.csv/.tsv file")
    _common(predict)

    demo = commands.add_parser("demo", help="transfer learning on digits in about a minute")
    demo.add_argument("--output", "-o", default="runs/demo", help="where the demo writes (default runs/demo)")
    demo.add_argument(
        "--draws",
        type=int,
        default=5,
        choices=range(1, 21),
        metavar="N",
        help="how many random draws of the few training images to average (default 5)",
    )
    _common(demo)
    return parser


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-4 (repeatable)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def cmd_train(args) -> dict:
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
    progress = not (args.quiet or args.json)
    run_dir, results = train_into(config, output, args.overwrite, stderr, progress=progress, interruptible=True)
    return _report_training(args, run_dir, results)


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
    with holding(run_dir, _is_main_process()):
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"--resume: {run_dir} is not a tunelab run directory (no {CONFIG})")
        if (run_dir / RESULTS).exists():
            raise UserError(f"--resume: {run_dir} already finished (it has {RESULTS}); nothing to resume")
        config = load_config(run_dir / CONFIG)
        if args.restart:
            if _is_main_process():
                forget_progress(run_dir)
        else:
            check_config_unchanged(run_dir, config)
        progress = not (args.quiet or args.json)
        results = run_training(config, run_dir, stderr, progress=progress, resume=not args.restart, interruptible=True)
    return _report_training(args, run_dir, results)


def _report_training(args, run_dir: Path, results: dict) -> dict:
    from tunelab.report import terminal
    from tunelab.rundir import REPORT

    if not args.json and _is_main_process():
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
    if results.get("diverged") and _is_main_process():
        print(f"error: {results['stop_reason']}", file=sys.stderr)
    return {"run_dir": str(run_dir), **results}


def cmd_compare(args) -> dict:
    from rich.markup import escape

    from tunelab.config import dump_config, load_config
    from tunelab.recipes.compare import parse_strategies, run_compare
    from tunelab.report.compare import comparison_table, failure_lines, forgetting_table, measured_forgetting
    from tunelab.rundir import REPORT, fresh_run_dir

    config = load_config(args.config, args.overrides)
    names = parse_strategies(args.strategies, config)
    output = Path(args.output or f"runs/{Path(args.config).stem}-compare")
    with fresh_run_dir(output, args.overwrite, dump_config(config)):
        summary = run_compare(config, names, output, stderr, progress=not args.json)
    if not args.json:
        stdout.print(comparison_table(summary))
        if measured_forgetting(summary):
            stdout.print(forgetting_table(summary))
        for line in failure_lines(summary):
            stdout.print(f"[red]{escape(line)}[/]")
        stdout.print(f"comparison: {output / 'comparison.json'}   report: {output / REPORT}")
    return summary


def cmd_audit(args) -> dict:
    from tunelab.recipes.audit import AUDIT_JSON, AUDIT_PAGE, run_audit
    from tunelab.report.terminal import (
        audit_groups_table,
        audit_table,
        base_model_line,
        domain_gap_line,
        suspects_table,
    )

    config, name = _audit_config(args)
    output = Path(args.output or f"runs/{name}-audit")
    if args.probe_rows < 0:
        raise UserError("--probe-rows: must be 0 or more (0 skips the label-error probe)")
    report = run_audit(config, output, args.probe_rows, args.reference, stderr, show=not args.json)
    if not args.json:
        stdout.print(audit_table(report))
        groups = audit_groups_table(report)
        if groups is not None:
            stdout.print(groups)
        if "base_model" in report:
            stdout.print(escape(base_model_line(report["base_model"])))
        if "classifier_auc" in report.get("domain_gap", {}):
            stdout.print(escape(domain_gap_line(report["domain_gap"])))
        if report.get("label_errors", {}).get("suspects"):
            stdout.print(suspects_table(report["label_errors"]))
        for line in report["warnings"]:
            stderr.print(f"[yellow]warning:[/] {escape(line)}")
        stdout.print(f"audit: {output / AUDIT_JSON}   report: {output / AUDIT_PAGE}")
    return report


def cmd_quantize(args) -> dict:
    from tunelab.recipes.quantize import run_quantize
    from tunelab.report.terminal import compression_table

    if args.calibration_rows < 1:
        raise UserError("--calibration-rows: must be 1 or more")
    run_dir = Path(args.run_dir)
    output = Path(args.output or f"{run_dir}-int8-{args.method}")
    with holding(output):
        results = run_quantize(
            run_dir, args.method, output, args.overwrite, args.calibration_rows, stderr, show=not args.json
        )
    if not args.json:
        stdout.print(compression_table(results["compression"], "float", "int8"))
        stdout.print(f"run directory: {output}")
    return results


def cmd_distill(args) -> dict:
    from tunelab.recipes.distill import run_distill
    from tunelab.report.terminal import compression_table

    output = Path(args.output or f"{Path(args.run_dir)}-distilled")
    with holding(output):
        show = not (args.quiet or args.json)
        results = run_distill(Path(args.run_dir), args.student, args.overrides, output, args.overwrite, stderr, show)
    if not args.json:
        stdout.print(compression_table(results["distillation"], "teacher", "student"))
        stdout.print(f"run directory: {output}   report: {output / 'report.html'}")
    return results


def cmd_tune(args) -> dict:
    from tunelab.config import dump_config, load_config
    from tunelab.io import write_atomic
    from tunelab.recipes.tune import BEST, SUMMARY, run_tune
    from tunelab.report.tune import best_lines, trials_table
    from tunelab.rundir import CONFIG, REPORT

    config = load_config(args.config, args.overrides)
    trials = args.trials if args.trials is not None else config.tune.trials
    if trials < 1:
        raise UserError("--trials: must be 1 or more")
    output = Path(args.output or f"runs/{Path(args.config).stem}-tune")
    with holding(output):
        _claim_study_dir(output, dump_config(config))
        write_atomic(output / CONFIG, dump_config(config))
        summary = run_tune(config, output, trials, args.storage, stderr, show=not args.json)
    if not args.json:
        stdout.print(trials_table(summary))
        for line in best_lines(summary, output / BEST):
            stdout.print(escape(line))
        stdout.print(f"study: {output / SUMMARY}   report: {output / REPORT}")
    return summary


def _claim_study_dir(output: Path, config_text: str) -> None:
    """A new folder, or one holding a study of this same config (continued, never overwritten)."""
    from tunelab.rundir import CONFIG

    if output.exists() and not output.is_dir():
        raise UserError(f"output: {output} exists and is a file")
    if output.is_dir() and any(output.iterdir()):
        saved = output / CONFIG
        if not saved.is_file():
            raise UserError(f"output: {output} exists and is not a tunelab study; choose another --output")
        if saved.read_text(encoding="utf-8") != config_text:
            raise UserError(f"output: {output} holds a study of another config; choose another --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"output: cannot create {output}: {error.strerror or error}") from None


def cmd_lr_find(args) -> dict:
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


def cmd_continual(args) -> dict:
    from tunelab.config import dump_config, load_config
    from tunelab.recipes.continual import SUMMARY, run_continual
    from tunelab.report.continual import matrix_table, summary_table
    from tunelab.rundir import CONFIG, REPORT, fresh_run_dir

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
            from tunelab.config import comma_list

            overrides.append(f"continual.methods={json.dumps(comma_list(args.methods, '--methods'))}")
        config = load_config(args.config, overrides)
        if config.continual is None:
            raise UserError(f"{args.config}: no continual section (continual: {{benchmark: split-digits}})")
        output = Path(args.output or f"runs/{Path(args.config).stem}-continual")
        with fresh_run_dir(output, args.overwrite, dump_config(config)):
            results = run_continual(config, output, stderr, show=not args.json)
    if not args.json:
        for method, found in results["methods"].items():
            stdout.print(matrix_table(method, found))
        stdout.print(summary_table(results))
        stdout.print(f"results: {output / SUMMARY}   report: {output / REPORT}")
    return results


def _audit_config(args):
    """The config to audit and a name for its output: a config file, or --data and friends."""
    from tunelab.config import load_config

    files = {"train": args.data, "validation": args.validation, "test": args.test}
    if args.config:
        options = {"data": args.data, "validation": args.validation, "test": args.test, "model": args.model}
        given = [f"--{key}" for key, value in options.items() if value]
        if given:
            raise UserError(f"audit: {given[0]} goes without CONFIG; with a config use --set data.train=... instead")
        return load_config(args.config, args.overrides), Path(args.config).stem
    if not args.data:
        raise UserError("audit: give a config file (CONFIG) or a data file (--data FILE)")
    task = "image-classification" if Path(args.data).is_dir() else "text-classification"
    base = {
        "task": task,
        "model": {"source": args.model or ("minilm" if task == "text-classification" else "cnn")},
        "data": {key: value for key, value in files.items() if value},
    }
    return load_config(None, args.overrides, base=base), Path(args.data).stem


def cmd_export(args) -> dict:
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


def cmd_eval(args) -> dict:
    from tunelab.recipes.evaluate import run_evaluation
    from tunelab.report.terminal import groups_table, metrics_only_table

    metrics, task = run_evaluation(Path(args.run_dir), args.data, progress=not (args.quiet or args.json))
    if not args.json:
        stdout.print(metrics_only_table(metrics, f"evaluation of {args.run_dir}", task.table_metrics))
        for split in metrics:
            table = groups_table({"final": metrics}, split)
            if table is not None:
                stdout.print(table)
    return metrics


def cmd_predict(args) -> list[dict]:
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


def cmd_demo(args) -> dict:
    from tunelab.recipes.demo import run_demo

    return run_demo(Path(args.output), stdout, stderr, draws=args.draws, show=not args.json)


COMMANDS = {
    "train": cmd_train,
    "compare": cmd_compare,
    "export": cmd_export,
    "audit": cmd_audit,
    "continual": cmd_continual,
    "lr-find": cmd_lr_find,
    "tune": cmd_tune,
    "quantize": cmd_quantize,
    "distill": cmd_distill,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "demo": cmd_demo,
}


def _is_main_process() -> bool:
    from tunelab.builder.runtime import process_state

    return process_state().is_main_process


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with set_up_uncollected():  # until the command's model is loaded
            output = COMMANDS[args.command](args)
        if args.json and _is_main_process():
            print(json.dumps(output, indent=2, default=str))
        return 1 if isinstance(output, dict) and output.get("diverged") else 0
    except UserError as error:
        print(f"error: {str(error).translate(LINE_BREAKS)}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: output: cannot write{where}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(str(interrupt) or "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
