"""A run's model as ONNX (``model.onnx``), checked against PyTorch with onnxruntime before it is kept.

torch's exporter (``torch.onnx.export(dynamo=True)``, onnxscript underneath) traces the model with
the batch and sequence lengths left dynamic; the graph takes what the tokenizer gives
(``input_ids``, ``attention_mask`` and, where the model uses them, ``token_type_ids``) or
``pixel_values`` and returns the logits. Adapters need no merge: the graph computes whatever the
model computes (bottleneck adapters too, which cannot fold into the weights). Beside the graph go
the tokenizer or image settings, ``label_map.json`` and a card with the onnxruntime snippet.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunelab.errors import UserError, first_line
from tunelab.io import write_atomic, write_json

GRAPH = "model.onnx"
TOLERANCE = 1e-4  # largest |ONNX - PyTorch| logit accepted
CHECK_TEXTS = [
    "a short one",
    "a longer sentence than the others, so the batch holds padding and several lengths at once",
    "ok",
]


class _TextLogits(nn.Module):
    """The model with the tokenizer's outputs as named inputs and plain logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return _plain(self.model(input_ids=input_ids, attention_mask=attention_mask, **extra))


class _ImageLogits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return _plain(self.model(pixel_values=pixel_values))


def _plain(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def export_onnx(loaded, staging: Path) -> dict:
    """Write ``model.onnx`` and its processor into ``staging``; return the check and latency numbers."""
    if loaded.quantized:
        raise UserError("export --format onnx: an int8 model uses torch's own quantized kernels; export the float run")
    example = _example_inputs(loaded)
    names = list(example)
    text = names != ["pixel_values"]
    model = (_TextLogits if text else _ImageLogits)(loaded.model.eval()).eval()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {name: {0: batch, 1: sequence} if text else {0: batch} for name in names}
    if text and "token_type_ids" not in names:
        dims["token_type_ids"] = None
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)  # the exporter lists every torchvision operator it skips
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (), str(staging / GRAPH), kwargs=example, input_names=names, output_names=["logits"],
                dynamic_shapes=dims, dynamo=True, verbose=False, report=False,
            )  # fmt: skip
    except Exception as error:  # the exporter raises many kinds; each means this model does not export
        raise UserError(f"export --format onnx: this model cannot be exported: {_cause(error)}") from None
    finally:
        quiet.setLevel(level)
    check = _check_against_torch(model, staging / GRAPH, _example_inputs(loaded, check=True))
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(staging)
    write_json(staging / "onnx.json", {"inputs": names, "output": "logits", "preprocessing": loaded.preprocessing})
    return check


def _cause(error: BaseException) -> str:
    """The innermost reason the exporter gives (its own message is a page of next steps)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return first_line(error)


def _example_inputs(loaded, check: bool = False) -> dict[str, torch.Tensor]:
    if loaded.tokenizer is not None:
        texts = CHECK_TEXTS if check else CHECK_TEXTS[:2]
        max_length = loaded.preprocessing.get("max_length", 512)
        encoded = loaded.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        accepted = _accepted(loaded.model)
        return {name: value for name, value in encoded.items() if name in accepted}
    size = loaded.preprocessing.get("image_size") or 224
    channels = loaded.preprocessing.get("channels", 3)
    generator = torch.Generator().manual_seed(1 if check else 0)
    return {"pixel_values": torch.randn(3 if check else 2, channels, size, size, generator=generator)}


def _accepted(model: nn.Module) -> set[str]:
    """The tokenizer outputs the model takes (a pooled classifier's encoder takes token types too)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "encoder", base) if type(base).__name__ == "PooledClassifier" else base
    return set(inspect.signature(inner.forward).parameters) & {"input_ids", "attention_mask", "token_type_ids"}


def _check_against_torch(model: nn.Module, graph: Path, inputs: dict[str, torch.Tensor]) -> dict:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch, for a fair timing
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feeds = {name: value.numpy() for name, value in inputs.items()}
    with torch.no_grad():
        expected = model(**inputs).float().numpy()
    got = session.run(None, feeds)[0]
    difference = float(np.abs(expected - got).max())
    if not difference <= TOLERANCE:
        raise UserError(f"export --format onnx: onnxruntime's logits differ from PyTorch's by {difference:.2g}")
    single = {name: value[:1] for name, value in feeds.items()}
    return {
        "max_abs_difference": difference,
        "latency_ms": {
            "onnxruntime": _milliseconds(lambda: session.run(None, single)),
            "pytorch": _milliseconds(lambda: model(**{name: torch.from_numpy(v) for name, v in single.items()})),
        },
        "latency_batch": 1,
        "latency_threads": torch.get_num_threads(),
    }


def _milliseconds(call, repeats: int = 20) -> float:
    """Median wall time of one call, after two warm-up calls."""
    with torch.no_grad():
        for _ in range(2):
            call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def write_onnx_card(staging: Path, folder: Path, check: dict, labels, max_length: int | None) -> None:
    """The card of an ONNX folder written in ``staging`` that will be ``folder``."""
    latency = check["latency_ms"]
    if max_length is not None:
        feed = [
            "from transformers import AutoTokenizer",
            "",
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
            "names = [i.name for i in session.get_inputs()]",
            f"encoded = tokenizer(texts, padding=True, truncation=True, max_length={max_length}, return_tensors='np')",
            "logits = session.run(None, {name: encoded[name] for name in names})[0]",
        ]
    else:
        feed = ["# pixel_values: float32 [batch, channels, height, width], prepared as onnx.json's preprocessing says",
                "logits = session.run(None, {'pixel_values': pixel_values})[0]"]  # fmt: skip
    lines = [
        "# ONNX export (tunelab)",
        "",
        f"onnxruntime's logits match PyTorch's to {check['max_abs_difference']:.2g}. One input: "
        f"{latency['onnxruntime']:.2f} ms in onnxruntime, {latency['pytorch']:.2f} ms in PyTorch (this machine).",
        "",
        "```python",
        "import onnxruntime",
        "",
        f"FOLDER = {str(folder)!r}",
        f"labels = {dict(labels.id2label)!r}",
        "texts = ['an example to classify']",
        "session = onnxruntime.InferenceSession(f'{FOLDER}/model.onnx', providers=['CPUExecutionProvider'])",
        *feed,
        "```",
        "",
    ]
    write_atomic(Path(staging) / "README.md", "\n".join(lines))
