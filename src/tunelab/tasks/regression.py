"""Regression: one number per row (a score, a rating, a price) from a text, a text pair or an image.

The model puts out one value. Targets may be normalised to mean 0 and standard deviation 1 on
train (``regression.normalize``), which keeps the first steps of a fresh head from chasing a
target far from zero; the mean and scale are saved with the model, and every metric, prediction
and plot is in the data's own units. The loss is MSE, or Huber (``regression.loss: huber``) where
a few wild targets should not dominate. Metrics are scikit-learn's and SciPy's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tunelab.errors import UserError
from tunelab.tasks.base import Task

PLOTTED_POINTS = 5000  # predicted-vs-true points kept per split for the report's plots


@dataclass(frozen=True)
class NumericTarget:
    """The target column's name and the normalisation learned on train."""

    column: str
    mean: float = 0.0
    scale: float = 1.0

    @property
    def names(self) -> tuple[str, ...]:
        return (self.column,)

    @property
    def id2label(self) -> dict[int, str]:
        return {0: self.column}

    @property
    def label2id(self) -> dict[str, int]:
        return {self.column: 0}

    def __len__(self) -> int:
        return 1

    def encode(self, labels: list, where: str) -> list[float]:
        """Normalised targets; ``where`` names what the user gave (``data.train``, ``--data``)."""
        return [(value - self.mean) / self.scale for value in numbers(labels, self.column, where)]

    def decode(self, values: torch.Tensor) -> torch.Tensor:
        """Model outputs (or encoded targets) back in the data's own units."""
        return values.double() * self.scale + self.mean

    def to_meta(self) -> dict:
        """What ``tunelab.json`` records beside the labels, for the model to be read back in these units."""
        return {"target": {"column": self.column, "mean": self.mean, "scale": self.scale}}


def numbers(labels: list, column: str, where: str) -> list[float]:
    """Every label as a finite float, or one line naming the first row that is not."""
    values = []
    for row, label in enumerate(labels, start=1):
        try:
            value = float(str(label).strip())
        except ValueError:
            shown = repr(label) if len(repr(label)) <= 40 else repr(label)[:37] + "..."
            raise UserError(
                f"{where}: column '{column}' holds {shown} at data row {row}; a regression target is a number"
            ) from None
        if not math.isfinite(value):
            raise UserError(f"{where}: column '{column}' holds {label!r} at data row {row}; targets must be finite")
        values.append(value)
    return values


class Regression(Task):
    name = "regression"
    metrics = ("loss", "mse", "rmse", "mae", "r2", "pearson", "spearman")
    default_metric = "spearman"
    lower_is_better = frozenset({"loss", "mse", "rmse", "mae"})
    gap_metrics = ("loss", "rmse", "spearman")
    curve_metrics = ("pearson", "spearman", "r2")
    table_metrics = ("rmse", "mae", "r2", "pearson", "spearman")
    huber_delta: float | None = None  # set by ``configured``: MSE when None

    def reads(self, config) -> str:
        return "image" if config.data.image_column else "text"

    def targets(self, labels: list, config) -> NumericTarget:
        values = np.array(numbers(labels, config.data.label_column, "data.train"))
        if len(values) < 2 or values.std() == 0:
            raise UserError(f"data.train: column '{config.data.label_column}' holds one value only; nothing to learn")
        if not config.regression.normalize:
            return NumericTarget(config.data.label_column)
        return NumericTarget(config.data.label_column, float(values.mean()), float(values.std()))

    def saved_targets(self, meta: dict) -> NumericTarget:
        return NumericTarget(**meta["target"])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        predicted, labels = logits.float().reshape(-1), labels.float().reshape(-1)
        if self.huber_delta is not None:
            return torch.nn.functional.huber_loss(predicted, labels, delta=self.huber_delta)
        return torch.nn.functional.mse_loss(predicted, labels)

    def configured(self, config) -> Regression:
        """This task with the run's loss settings."""
        task = Regression()
        task.huber_delta = config.regression.huber_delta if config.regression.loss == "huber" else None
        return task

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, targets, groups: list | None = None) -> dict:
        from scipy.stats import pearsonr, spearmanr
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        loss = self.loss(logits, labels).item()
        predicted = targets.decode(logits.reshape(-1)).numpy()
        truth = targets.decode(labels.reshape(-1)).numpy()
        varied = len(truth) >= 2 and np.ptp(truth) > 0 and np.ptp(predicted) > 0 and np.isfinite(predicted).all()
        mse = float(mean_squared_error(truth, predicted)) if np.isfinite(predicted).all() else math.inf
        metrics = {
            "loss": loss,
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": float(mean_absolute_error(truth, predicted)) if math.isfinite(mse) else math.inf,
            "r2": float(r2_score(truth, predicted)) if len(truth) >= 2 and math.isfinite(mse) else None,
            # undefined for a constant prediction (a fresh head can give one) or a single row
            "pearson": float(pearsonr(truth, predicted)[0]) if varied else None,
            "spearman": float(spearmanr(truth, predicted)[0]) if varied else None,
            "examples": int(len(truth)),
        }
        kept = np.linspace(0, len(truth) - 1, min(len(truth), PLOTTED_POINTS)).round().astype(int)
        metrics["points"] = {"true": truth[kept].tolist(), "predicted": predicted[kept].tolist()}
        return metrics

    def predictions(self, logits: torch.Tensor, targets) -> list[dict]:
        return [{targets.column: value} for value in targets.decode(logits.reshape(-1)).tolist()]

    def report_sections(self, results: dict) -> list[str]:
        from tunelab.report import plots
        from tunelab.report.html import image

        sections = ["<h2>Predicted vs true (fine-tuned)</h2><div class='grid'>"]
        for split in ("validation", "test"):
            points = results["final"].get(split, {}).get("points")
            if points:
                base = results.get("base", {}).get(split, {}).get("points")
                sections.append(image(plots.predicted_vs_true(points, base, split), f"predicted vs true ({split})"))
                sections.append(image(plots.residuals(points, split), f"residuals ({split})"))
        return [*sections, "</div>"]

    def summary_lines(self, results: dict) -> list[str]:
        gap = results.get("gap", {})
        return [f"train - validation RMSE gap: {gap['rmse']:+.4f}"] if "rmse" in gap else []
