"""Tasks: one module each, registered by name like the strategies; ``task:`` in a config names one.

``get_task(config)`` is how every other package reaches the task a run is doing; none of them
tests a task's name.
"""

from __future__ import annotations

from tunelab.errors import UserError
from tunelab.tasks.base import Task, scalar_metrics
from tunelab.tasks.classification import ImageClassification, TextClassification
from tunelab.tasks.regression import NumericTarget, Regression
from tunelab.tasks.tokens import TokenClassification

TASKS: dict[str, Task] = {}
# Named in the schema so a config that asks for one is told it is coming, not that it is misspelt.
PLANNED_TASKS = ("causal-lm", "seq2seq", "image-text")


def register_task(task: Task) -> Task:
    """Make ``task`` available as ``task: <task.name>`` (a plugin calls this on import)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name")
    TASKS[task.name] = task
    return task


def get_task(config_or_name) -> Task:
    """The task a config (or a name, as results.json records it) asks for, set up for that run."""
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.task
    if name not in TASKS:
        raise UserError(f"task: '{name}' is not a task; choose from {', '.join(TASKS)}")
    task = TASKS[name]
    return task if isinstance(config_or_name, str) else task.configured(config_or_name)


for _task in (TextClassification(), ImageClassification(), Regression(), TokenClassification()):
    register_task(_task)

__all__ = [
    "PLANNED_TASKS",
    "TASKS",
    "NumericTarget",
    "Task",
    "get_task",
    "register_task",
    "scalar_metrics",
]
