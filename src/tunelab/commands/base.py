"""What every command shares: its declaration (``Command``), the consoles it prints to and the
options most commands take."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console

stdout = Console()
stderr = Console(stderr=True)


@dataclass(frozen=True)
class Command:
    """One ``tunelab`` command: its name and help line, its arguments, and ``run(args)``, which does
    the work, prints what it found unless ``--json`` and returns what ``--json`` prints."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]


def overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-4 (repeatable)",
    )


def output_options(parser: argparse.ArgumentParser, where: str, replaced: str | None = None) -> None:
    """``--output`` (``where`` says the default) and, for a folder of its own, ``--overwrite``."""
    parser.add_argument("--output", "-o", help=where)
    if replaced is not None:
        parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {replaced}")


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def showing(args) -> bool:
    """Whether to show progress: not under ``--quiet`` or ``--json``."""
    return not (args.quiet or args.json)


def is_main_process() -> bool:
    from tunelab.builder.runtime import process_state

    return process_state().is_main_process
