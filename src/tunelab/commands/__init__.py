"""The commands of the ``tunelab`` command line, one module each: its arguments, its run and its
printing (``base.Command``). A new command is one module here and one line below; a package adds
its own with ``register_command``, or by naming its ``Command`` under the ``tunelab.commands``
entry-point group, which the command line loads before it parses."""

from __future__ import annotations

from importlib.metadata import entry_points

from tunelab.commands import (
    audit,
    compare,
    continual,
    demo,
    distill,
    evaluate,
    export,
    lr_find,
    predict,
    quantize,
    train,
    tune,
)
from tunelab.commands.base import Command

_COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Make ``command`` a ``tunelab`` command (listed in the order registered)."""
    _COMMANDS[command.name] = command
    return command


def commands() -> list[Command]:
    """Every command: the built-in ones, then those installed packages name as entry points."""
    for point in entry_points(group="tunelab.commands"):
        if point.name not in _COMMANDS:
            register_command(point.load())
    return list(_COMMANDS.values())


for _module in (train, compare, lr_find, quantize, distill, tune, continual, audit, export, evaluate, predict, demo):
    register_command(_module.COMMAND)
