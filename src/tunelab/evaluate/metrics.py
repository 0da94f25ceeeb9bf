"""Classification metrics from logits: loss, accuracy, macro precision/recall/F1, ROC-AUC
(binary, or one-vs-rest macro), and the confusion matrix, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict:
    # Imported here: scikit-learn costs a second, and a run whose base scores are cached needs it
    # only after training.
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    probabilities = torch.softmax(logits, dim=-1).numpy()
    truth = labels.numpy()
    predicted = probabilities.argmax(axis=-1)
    # Macro averages run over the classes this split holds or the model predicted: a class absent
    # from both has no precision or recall, and scoring it 0 would punish a flawless model.
    seen = np.union1d(truth, predicted)
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, labels=seen, average="macro", zero_division=0
    )
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": _auc(truth, probabilities, num_labels),
        "examples": int(len(truth)),
        "confusion_matrix": confusion_matrix(truth, predicted, labels=list(range(num_labels))).tolist(),
    }


def _auc(truth: np.ndarray, probabilities: np.ndarray, num_labels: int) -> float | None:
    """None when AUC is undefined: a split holding fewer than two classes."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(truth)
    if len(present) < 2 or not np.isfinite(probabilities).all():  # undefined, or the model put out inf/NaN
        return None
    if num_labels == 2:
        return float(roc_auc_score(truth, probabilities[:, 1]))
    if len(present) < num_labels:
        # One-vs-rest over the classes present; renormalise so rows still sum to one.
        subset = probabilities[:, present]
        subset = subset / subset.sum(axis=1, keepdims=True)
        if len(present) == 2:
            return float(roc_auc_score(truth == present[1], subset[:, 1]))
        return float(roc_auc_score(truth, subset, multi_class="ovr", average="macro", labels=present))
    return float(roc_auc_score(truth, probabilities, multi_class="ovr", average="macro"))
