"""`tunelab eval`: score a finished run on its own splits or on another labelled file."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.builder.runtime import make_accelerator, quiet_libraries
from tunelab.config import RunConfig, load_config
from tunelab.data import RawData, prepare_data, read_data
from tunelab.engine.data_loading import eval_loader
from tunelab.errors import UserError
from tunelab.evaluate import evaluate_splits
from tunelab.models import load_saved_model
from tunelab.rundir import CONFIG, MODEL, existing_run
from tunelab.tasks import Task, get_task


def load_run(run_dir: Path) -> tuple[RunConfig, object]:
    run_dir = existing_run(run_dir)
    config = load_config(run_dir / CONFIG)
    return config, load_saved_model(run_dir / MODEL, config)


def run_datasets(config: RunConfig, loaded) -> dict:
    """The config's splits, prepared for a saved model and labelled with the model's own labels."""
    raw = read_data(config)
    return prepare_data(RawData(raw.splits, loaded.labels, raw.channels), loaded, config).datasets


def run_evaluation(run_dir: Path, data_file: str | None = None, progress: bool = False) -> tuple[dict, Task]:
    """Metrics per split (the run's own, or ``data_file``), and the task that names them."""
    quiet_libraries()
    config, loaded = load_run(run_dir)
    labels = loaded.labels
    if data_file:
        if config.data.train == "digits":
            raise UserError("--data: this run used the built-in digits; it has no file format to read")
        split = get_task(config).read_split(data_file, "data", config, where="--data", extra=True)
        labels.encode(split.labels, "--data")  # fail early on a class the run never learned
        raw = RawData({"data": split}, labels)
    else:
        raw = read_data(config)
        raw = RawData({k: v for k, v in raw.splits.items() if k != "train"}, labels, raw.channels)
    prepared = prepare_data(raw, loaded, config)
    accelerator = make_accelerator(config.train, cpu=loaded.quantized)
    model = accelerator.prepare(loaded.model)
    task = get_task(config)
    collate = task.collate(loaded, config)
    loaders = {
        name: accelerator.prepare(eval_loader(dataset, config.train.eval_batch_size, collate))
        for name, dataset in prepared.datasets.items()
    }
    console = Console(stderr=True) if progress else None
    scores = evaluate_splits(model, loaders, accelerator, task.scorer(labels), console, "evaluating", prepared.groups)
    return scores, task
