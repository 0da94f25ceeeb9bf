"""Evaluation: metrics per split, for the base model and the fine-tuned one."""

from __future__ import annotations

import torch

from tunelab.compress.quantize import quantizers_paused
from tunelab.engine.data_loading import in_dataset_order
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


def model_inputs(batch: dict) -> dict:
    """A batch without its labels: what the model's forward takes."""
    return {key: value for key, value in batch.items() if key != "labels"}


def balanced_weights(label_ids: list[int], num_labels: int) -> torch.Tensor:
    """n / (k * count) per class, as scikit-learn's "balanced": a rare class weighs more."""
    counts = torch.bincount(torch.tensor(label_ids), minlength=num_labels).float().clamp(min=1)
    return counts.sum() / (num_labels * counts)


@torch.inference_mode()
def collect_logits(
    model, loader, accelerator, advance=None, read_logits=output_logits
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, gathered from all processes; ``read_logits`` takes them
    from the model's output (or from elsewhere, such as the old head beside it)."""
    model.eval()
    all_logits, all_labels = [], []
    with quantizers_paused(model):  # quantization-aware models keep observing in eval mode
        for batch in loader:
            logits = read_logits(model(**model_inputs(batch))).float()
            logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
            if advance:
                advance()
    return in_dataset_order(loader, torch.cat(all_logits)), in_dataset_order(loader, torch.cat(all_labels))


def evaluate_split(
    model, loader, accelerator, score, advance=None, groups: list | None = None, read_logits=output_logits
) -> dict:
    """Metrics of one split, as ``score`` (a task's ``scorer``) computes them from every output and
    label; with ``groups`` (one name per example, in the dataset's order) also per group."""
    logits, labels = collect_logits(model, loader, accelerator, advance, read_logits)
    return score(logits, labels, groups)


def evaluate_splits(
    model, loaders: dict, accelerator, score, console=None, title: str = "", groups: dict | None = None
) -> dict:
    """Metrics for every split, with a transient progress bar over batches when a console is given.
    ``groups`` maps a split name to its examples' group names (data.group_column)."""
    groups = groups or {}
    if console is None or not accelerator.is_main_process:
        return {
            name: evaluate_split(model, loader, accelerator, score, groups=groups.get(name))
            for name, loader in loaders.items()
        }
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn(f"[bold]{title or 'evaluating'}[/] {{task.description}}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        results = {}
        for name, loader in loaders.items():
            task = progress.add_task(name, total=len(loader))
            advance = lambda t=task: progress.advance(t)  # noqa: E731
            results[name] = evaluate_split(model, loader, accelerator, score, advance, groups.get(name))
        return results


__all__ = [
    "classification_metrics",
    "collect_logits",
    "evaluate_split",
    "evaluate_splits",
    "model_inputs",
    "output_logits",
]
