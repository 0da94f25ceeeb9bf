"""The command line: parse, run the command (``tunelab.commands``), turn a user's error into one
line and an exit status."""

from __future__ import annotations

import argparse
import errno
import json
import sys

from tunelab.collector import set_up_uncollected
from tunelab.commands import commands
from tunelab.commands.base import is_main_process
from tunelab.errors import UserError

# Everything str.splitlines() breaks at, escaped: a user's key, path or label may hold any of them.
LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from tunelab import __version__

    parser = Parser(prog="tunelab", description="Fine-tune pretrained PyTorch models and measure the result.")
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in commands():
        sub = subparsers.add_parser(command.name, help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with set_up_uncollected():  # until the command's model is loaded
            output = args.run(args)
        if args.json and is_main_process():
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
