"""The task sequence: the split-digits benchmark or the config's own tasks, each read and prepared
with the model's processor and labelled for the scenario (a label map per task, or one over all)."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.data import RawData, prepare_data, read_data
from tunelab.data.labels import LabelMap
from tunelab.errors import UserError

SPLIT_DIGITS_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass
class Task:
    name: str
    config: RunConfig  # the run config with this task's data
    raw: RawData
    labels: LabelMap  # the task's own classes (task-incremental) or every class (class-incremental)
    datasets: dict | None = None

    @property
    def scored(self):
        return self.datasets.get("test") or self.datasets["validation"]


def read_tasks(config: RunConfig) -> list[Task]:
    """Every task's raw splits, labelled for ``config.continual.scenario``."""
    continual = config.continual
    if continual.benchmark == "split-digits":
        if config.data.train != "digits":
            raise UserError("data.train: the split-digits benchmark reads the built-in digits; remove data.train")
        entries = [
            (f"{a}/{b}", config.model_copy(update={"data": config.data.model_copy(update={"digits_classes": [a, b]})}))
            for a, b in SPLIT_DIGITS_PAIRS
        ]
    else:
        entries = [
            (
                task.name,
                config.model_copy(update={"data": task.data, "seed": config.seed if task.seed is None else task.seed}),
            )
            for task in continual.tasks
        ]
    tasks = []
    for name, task_config in entries:
        try:
            raw = read_data(task_config)
        except UserError as error:
            raise UserError(f"continual task '{name}': {error}") from None
        tasks.append(Task(name, task_config, raw, raw.labels))
    if continual.scenario == "class":
        every = LabelMap.from_labels([label for task in tasks for label in task.labels.names])
        for task in tasks:
            task.labels = every
    return tasks


def prepare_tasks(tasks: list[Task], loaded) -> None:
    for task in tasks:
        raw = RawData(task.raw.splits, task.labels, task.raw.channels)
        task.datasets = prepare_data(raw, loaded, task.config).datasets
