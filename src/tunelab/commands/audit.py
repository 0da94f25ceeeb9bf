"""`tunelab audit`: the data checked before training (balance, duplicates, leakage, label errors)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from tunelab.commands.base import Command, common, output_options, overrides, stderr, stdout
from tunelab.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config (its data section is audited)")
    parser.add_argument("--data", metavar="FILE", help="audit this train file (or image folder) without a config")
    parser.add_argument("--validation", metavar="FILE", help="with --data: a validation file to check for leakage")
    parser.add_argument("--test", metavar="FILE", help="with --data: a test file to check for leakage")
    parser.add_argument("--model", metavar="SOURCE", help="with --data: the model whose tokenizer and features to use")
    overrides(parser)
    output_options(parser, "where audit.json goes (default: runs/<config name>-audit)")
    parser.add_argument(
        "--reference",
        metavar="FILE",
        help="texts like those the base model knows (same text column): measures the domain gap to train",
    )
    parser.add_argument(
        "--probe-rows",
        type=int,
        default=10_000,
        metavar="N",
        help="train rows the label-error probe scores (default 10000; 0 skips it)",
    )
    common(parser)


def run(args) -> dict:
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
    if not args.json and report.get("task") == "token-classification":
        from tunelab.report.tag_audit import tag_audit_tables

        for table in tag_audit_tables(report):
            stdout.print(table)
    elif not args.json:
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
    if not args.json:
        for line in report["warnings"]:
            stderr.print(f"[yellow]warning:[/] {escape(line)}")
        stdout.print(f"audit: {output / AUDIT_JSON}   report: {output / AUDIT_PAGE}")
    return report


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
    from tunelab.data.tokens import CONLL_SUFFIXES

    task = "image-classification" if Path(args.data).is_dir() else "text-classification"
    if Path(args.data).suffix.lower() in CONLL_SUFFIXES:
        task = "token-classification"
    base = {
        "task": task,
        "model": {"source": args.model or ("cnn" if task == "image-classification" else "minilm")},
        "data": {key: value for key, value in files.items() if value},
    }
    return load_config(None, args.overrides, base=base), Path(args.data).stem


COMMAND = Command("audit", "check the data before training: balance, duplicates, leakage, ...", add_arguments, run)
