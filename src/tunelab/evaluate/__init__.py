"""Evaluation: metrics per split, for the base model and the fine-tuned one."""

from __future__ import annotations

import torch

from tunelab.compress.quantize import quantizers_paused
from tunelab.engine.data_loading import in_dataset_order
from tunelab.evaluate.metrics import classification_metrics

IGNORED = -100  # a label the loss and the scores skip (special tokens, padding)


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
            logits, labels = per_token(read_logits(model(**model_inputs(batch))).float(), batch["labels"])
            if labels.dim() == 2:  # a label per token: sequence lengths differ from process to process
                logits = accelerator.pad_across_processes(logits, dim=1)
                labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORED)
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
            if advance:
                advance()
    logits, labels = padded_cat(all_logits, 0.0), padded_cat(all_labels, IGNORED)
    return in_dataset_order(loader, logits), in_dataset_order(loader, labels)


def per_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits lined up with labels: with a label per token, outputs for virtual tokens a prompt
    method put in front of the sequence are dropped."""
    if labels.dim() == 2 and logits.dim() == 3 and logits.shape[1] > labels.shape[1]:
        logits = logits[:, -labels.shape[1] :]
    return logits, labels


def padded_cat(tensors: list[torch.Tensor], fill) -> torch.Tensor:
    """Batches joined along rows; batches of token outputs are padded to the longest first."""
    if tensors and tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, _right_pad(t, width), value=fill) for t in tensors]
    return torch.cat(tensors)


def _right_pad(tensor: torch.Tensor, width: int) -> tuple[int, ...]:
    """``F.pad``'s amounts, innermost dimension first: dimension 1 grown to ``width``."""
    return (0, 0) * (tensor.dim() - 2) + (0, width - tensor.shape[1])


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
