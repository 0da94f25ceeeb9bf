"""`tunelab lr-find`: the learning-rate range test on a config's own model, strategy and data, with
the curve in a report and the suggested rate (``--set optim.lr=auto`` runs the same test in a run)."""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from rich.console import Console

from tunelab.builder import class_weights_for, find_rate, prepare_run
from tunelab.builder.runtime import make_accelerator, quiet_libraries
from tunelab.config import RunConfig
from tunelab.errors import UserError
from tunelab.io import write_atomic, write_json
from tunelab.models.builtin import build_cached

LR_FIND_JSON = "lr_find.json"
LR_FIND_PAGE = "lr_find.html"


def run_lr_find(config: RunConfig, output: Path, console: Console, show: bool) -> dict:
    quiet_libraries()
    build_cached(config.model.source)
    accelerator = make_accelerator(config.train)
    set_seed(config.seed)

    def warn(line: str) -> None:
        if show and accelerator.is_main_process:
            console.print(f"[yellow]warning:[/] {line}")

    run = prepare_run(config, accelerator, warn)
    try:
        found = find_rate(run, config, accelerator, class_weights_for(config, run.raw),
                          console if show else None)  # fmt: skip
    except ValueError as error:  # stopped before a curve could be read
        raise UserError(f"lr-find: {error}") from None
    found |= {"strategy": config.strategy.name, "trainable_parameters": run.trainable}
    if accelerator.is_main_process:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"output: cannot create {output}: {error.strerror or error}") from None
        write_json(output / LR_FIND_JSON, found)
        from tunelab.report.lr_find import lr_find_page

        write_atomic(output / LR_FIND_PAGE, lr_find_page(found))
    return found
