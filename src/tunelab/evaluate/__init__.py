"""Evaluation: metrics per split, for the base model and the fine-tuned one."""

from __future__ import annotations

import torch

from tunelab.evaluate.metrics import classification_metrics


def output_logits(outputs) -> torch.Tensor:
    """Logits from a tensor, a tuple, or a Hugging Face output object."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, tuple | list):
        return outputs[0]
    raise TypeError(f"cannot find logits in model output of type {type(outputs).__name__}")


def classification_loss(model, batch: dict) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = output_logits(model(**inputs))
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"])


@torch.inference_mode()
def collect_logits(model, loader, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = output_logits(model(**inputs)).float()
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate_split(model, loader, accelerator, num_labels: int) -> dict:
    logits, labels = collect_logits(model, loader, accelerator)
    return classification_metrics(logits, labels, num_labels)


__all__ = ["classification_loss", "classification_metrics", "collect_logits", "evaluate_split", "output_logits"]
