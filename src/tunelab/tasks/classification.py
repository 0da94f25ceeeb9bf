"""Classification of texts, text pairs and images: one class per row, cross-entropy, accuracy,
macro precision/recall/F1, ROC-AUC and the confusion matrix."""

from __future__ import annotations

import torch

from tunelab.tasks.base import Task


class Classification(Task):
    metrics = ("loss", "accuracy", "precision", "recall", "f1", "auc")
    default_metric = "accuracy"
    gap_metrics = ("loss", "accuracy", "f1")
    curve_metrics = ("accuracy", "f1", "auc")
    table_metrics = metrics
    has_classes = True
    class_outputs = True

    def targets(self, labels: list, config):
        from tunelab.data.labels import LabelMap  # here: tunelab.data asks for its task in turn

        return LabelMap.from_labels(labels)

    def saved_targets(self, meta: dict):
        from tunelab.data.labels import LabelMap

        return LabelMap(tuple(meta["labels"]))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is not None:
            weights = weights.to(logits.device)
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=weights)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, targets, groups: list | None = None) -> dict:
        from tunelab.evaluate.metrics import classification_metrics

        metrics = classification_metrics(logits, labels, len(targets))
        if groups is not None:
            from tunelab.evaluate.fairness import group_metrics

            metrics["groups"] = group_metrics(labels.numpy(), logits.argmax(dim=-1).numpy(), groups, len(targets))
        return metrics

    def predictions(self, logits: torch.Tensor, targets) -> list[dict]:
        rows = []
        for row in torch.softmax(logits.float(), dim=-1).tolist():
            index = max(range(len(row)), key=row.__getitem__)
            every = dict(zip(targets.names, row, strict=True))
            rows.append({"label": targets.names[index], "probability": row[index], "probabilities": every})
        return rows

    def report_sections(self, results: dict) -> list[str]:
        from tunelab.report import plots
        from tunelab.report.html import image

        sections = ["<h2>Confusion matrices (fine-tuned)</h2><div class='grid'>"]
        for split in ("validation", "test"):
            if split in results["final"]:
                matrix = results["final"][split]["confusion_matrix"]
                png = plots.confusion_matrix(matrix, results["labels"], split)
                sections.append(image(png, f"confusion matrix ({split})"))
        return [*sections, "</div>"]

    def summary_lines(self, results: dict) -> list[str]:
        gap = results.get("gap", {})
        return [f"train - validation accuracy gap: {gap['accuracy']:+.4f}"] if "accuracy" in gap else []


class TextClassification(Classification):
    name = "text-classification"

    def reads(self, config) -> str:
        return "text"


class ImageClassification(Classification):
    name = "image-classification"

    def reads(self, config) -> str:
        return "image"
