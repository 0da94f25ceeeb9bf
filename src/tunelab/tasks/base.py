"""The task contract: what a run learns to do, asked by every command and never named by one.

A task says how rows are read and labelled, how a batch is collated, which model class it needs
and how many outputs, its loss, its metrics (and which one a run selects by default), what
``predict`` prints, and its sections of the terminal table and the report. The engine,
strategies and commands hold a task object and call these methods; adding a task is one module
and one ``register_task`` line.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from tunelab.errors import UserError


class Task:
    """One task. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("loss",)  # what train.metric may name; shown in tables
    default_metric: ClassVar[str] = "loss"
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    gap_metrics: ClassVar[tuple[str, ...]] = ("loss",)  # train minus validation: the overfitting gap
    table_metrics: ClassVar[tuple[str, ...]] = ("loss",)  # the terminal's columns (80 wide: six at most)
    curve_metrics: ClassVar[tuple[str, ...]] = ()  # validation metrics the report plots over training
    has_classes: ClassVar[bool] = False  # one class per row: class weights, resampling, retain sets, fairness
    class_outputs: ClassVar[bool] = False  # class scores, per row or per token: distillation's KL applies
    pooled: ClassVar[bool] = True  # one output per row: a text model may pool its tokens (model.pooling)

    def reads(self, config) -> str:
        """``text`` (a table's text column, or two of them) or ``image`` (files)."""
        raise NotImplementedError

    def targets(self, labels: list, config):
        """What the model is to put out, learned from train's labels: a :class:`LabelMap` of
        classes, a numeric target. ``len()`` of it is the model's output width."""
        raise NotImplementedError

    def saved_targets(self, meta: dict):
        """The targets a saved model's ``tunelab.json`` records."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, targets, groups: list | None = None) -> dict:
        """Metrics of one split from the model's outputs, every name in ``metrics`` among them."""
        raise NotImplementedError

    def scorer(self, targets):
        """``score(logits, labels, groups=None)``: this task's metrics for ``targets``, as evaluation calls it."""
        return lambda logits, labels, groups=None: self.scores(logits, labels, targets, groups)

    def predictions(self, logits: torch.Tensor, targets) -> list[dict]:
        """What ``predict`` writes per row, beside the input."""
        raise NotImplementedError

    def report_sections(self, results: dict) -> list[str]:
        """HTML the run's report shows after its curves (confusion matrices, scatter plots)."""
        return []

    def summary_lines(self, results: dict) -> list[str]:
        """Lines the terminal prints below the results table."""
        return []

    def predict_rows(self, config, loaded, texts: list[str] | None, input_path: str | None) -> list[dict] | None:
        """``predict``'s rows where this task reads its inputs its own way; None: one output per
        input text or image, as ``predictions`` puts it."""
        return None

    def audit(self, config, tokenizer) -> dict | None:
        """The task's own data audit (``tunelab audit``); None: the class audit (balance,
        duplicates, leakage, label errors) applies."""
        return None

    # What follows derives from ``reads``; a task with another input overrides it.

    def read_split(self, path, role: str, config, where: str | None = None, extra: bool = False):
        """One split's rows as a ``RawSplit``; ``extra``: a file beside the run's own (``eval --data``),
        which may lack the group column."""
        from tunelab.data.readers import image_folder_split, table_split

        data = config.data
        if self.reads(config) == "image" and not data.image_column:
            if data.group_column:
                raise UserError("data.group_column: image folders have no columns; groups apply to table data")
            return image_folder_split(path, role, where=where)
        return table_split(
            path, role, data.text_column, data.label_column, data.text_pair_column, where=where,
            allow_blank=data.prepare.drop_empty, group_column=data.group_column, groups_required=not extra,
            classes=self.has_classes, image_column=data.image_column,
        )  # fmt: skip

    def cut_warning(self, split: str, count: int, rows: int, max_length: int) -> str:
        """What the run says when ``max_length`` cut ``count`` of a split's inputs."""
        return f"{split}: {count} of {rows} rows are longer than data.max_length ({max_length} tokens) and are cut"

    def text_dataset(self, tokenizer, inputs: list, ids: list, targets, config, fingerprint: str | None):
        """(dataset, rows or words cut by ``max_length``, whether read from the token cache) for a text split."""
        from tunelab.data.text import tokenize
        from tunelab.data.token_cache import cached_tokenize

        data = config.data
        if not data.cache:
            return *tokenize(tokenizer, inputs, ids, data.max_length), False
        return cached_tokenize(tokenizer, inputs, ids, data.max_length, fingerprint=fingerprint)

    def collate(self, loaded, config):
        """Batch assembly: dynamic padding for text, stacking for images."""
        if self.reads(config) == "text":
            from transformers import DataCollatorWithPadding

            return DataCollatorWithPadding(loaded.tokenizer)
        from torch.utils.data import default_collate

        return default_collate

    def auto_model(self, config):
        """The transformers class that puts a head for this task on a Hugging Face model."""
        import transformers

        kind = "ImageClassification" if self.reads(config) == "image" else "SequenceClassification"
        return getattr(transformers, f"AutoModelFor{kind}")

    def configured(self, config) -> Task:
        """This task with a run's own settings (a loss option, say); most tasks have none."""
        return self

    def better(self, metric: str, value: float, than: float) -> bool:
        return value < than if metric in self.lower_is_better else value > than

    def loss_function(self, weights: torch.Tensor | None = None, terms: list = (), task_weight: float = 1.0):
        """The loss of a batch, ``loss_fn(model, batch)`` as the loop calls it: this task's loss plus
        ``terms`` (see ``tunelab.loss``)."""
        from tunelab.loss import TrainingLoss

        return TrainingLoss(self, terms, weights, task_weight)


def scalar_metrics(metrics: dict) -> list[str]:
    """The metrics a split's scores hold as one number (or None where undefined), in their order:
    what every table shows, whichever the task."""
    return [key for key, value in metrics.items() if key != "examples" and (value is None or _number(value))]


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
