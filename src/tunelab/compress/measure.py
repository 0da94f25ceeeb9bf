"""What a compressed model costs and gains, measured the same way for it and its original:
size on disk, parameters, CPU latency at batch 1 and 32 (median of repeated runs, threads
stated), throughput, and accuracy on validation and test."""

from __future__ import annotations

import statistics
import time

import torch

from tunelab.evaluate import IGNORED, model_inputs, output_logits, padded_cat, per_token

REPEATS = {1: 30, 32: 10}
WARMUP = 3


@torch.inference_mode()
def scores(model, loader, score) -> dict:
    """Metrics of one split on the CPU (quantized kernels run there)."""
    logits, labels = [], []
    for batch in loader:
        batch_logits, batch_labels = per_token(output_logits(model(**model_inputs(batch))).float(), batch["labels"])
        logits.append(batch_logits)
        labels.append(batch_labels)
    return score(padded_cat(logits, 0.0), padded_cat(labels, IGNORED))


@torch.inference_mode()
def latency(model, batches: dict[int, dict]) -> dict:
    """Median seconds per batch for each batch size, and rows per second at the largest."""
    found = {"threads": torch.get_num_threads()}
    for size, batch in batches.items():
        inputs = model_inputs(batch)
        for _ in range(WARMUP):
            model(**inputs)
        times = []
        for _ in range(REPEATS.get(size, 10)):
            started = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - started)
        found[f"batch_{size}_ms"] = 1000 * statistics.median(times)
    largest = max(batches)
    found["rows_per_second"] = largest / (found[f"batch_{largest}_ms"] / 1000)
    return found


def parameters(model) -> int:
    """Weights in the float model, or held by the quantized one: int8 layers expose theirs through
    ``weight()`` and ``bias()`` methods rather than parameters."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if callable(weight) and not isinstance(weight, torch.nn.Parameter):
            count += weight().numel()
            held = bias() if callable(bias) else None
            count += held.numel() if held is not None else 0
    return count


LATENCY_SIZES = (1, 32)
SCORED = ("validation", "test")


def measured(model, datasets: dict, collate, score, batch_size: int) -> dict:
    """Accuracy on validation and test (in ``batch_size`` batches, as `tunelab eval` scores),
    latency at batch 1 and 32 on validation rows, and the parameter count."""
    from tunelab.engine.data_loading import eval_loader

    rows = datasets["validation"]
    timing = {size: collate([rows[i % len(rows)] for i in range(size)]) for size in LATENCY_SIZES}
    found = {
        split: scores(model, eval_loader(datasets[split], batch_size, collate), score)
        for split in SCORED
        if split in datasets
    }
    return found | latency(model, timing) | {"parameters": parameters(model)}


def weights_mb(folder) -> float:
    """Megabytes of weight files (safetensors) in a model folder."""
    from pathlib import Path

    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors")) / 1e6
