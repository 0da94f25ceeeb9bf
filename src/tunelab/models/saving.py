"""Save a model folder that tunelab (and, for Hugging Face models, plain transformers) reloads.

Weights are safetensors. The folder is written under a temporary name and renamed into place,
so a crash never leaves a half-written model where a complete one is expected.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_model as save_safetensors
from torch import nn

from tunelab.io import as_os_error, give_usual_permissions, write_json
from tunelab.models.adapted import bottleneck_settings, is_peft, save_adapted
from tunelab.models.loading import LABEL_MAP, TUNELAB_META, LoadedModel, portable_base_name
from tunelab.models.pooled import PooledClassifier, save_pooled

FORMAT_VERSION = 1


def save_model(
    loaded: LoadedModel, model: nn.Module, folder: Path, labels, task: str, quantization: dict | None = None
) -> Path:
    """``quantization`` (an int8 model from quantization-aware training): its int8 state is saved
    as plain tensors with safetensors, and reloads into the run's own model quantized alike."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _write_model(loaded, model, staging, labels, task, quantization)
        give_usual_permissions(staging)
    except BaseException as error:  # a half-written model is of no use and may hold a full disk
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, SafetensorError):  # a full disk told as text: as an OSError it reads as one
            raise as_os_error(error) from None
        raise
    if folder.exists():
        previous = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(previous, ignore_errors=True)
        folder.rename(previous)
        staging.rename(folder)
        shutil.rmtree(previous)
    else:
        staging.rename(folder)
    return folder


def _write_model(loaded: LoadedModel, model: nn.Module, staging: Path, labels, task: str, quantization) -> None:
    base = model.get_base_model() if is_peft(model) else model
    extra = {"pooling": base.pooling} if isinstance(base, PooledClassifier) else {}
    max_length = loaded.preprocessing.get("max_length", 512)
    record_labels(base, labels)
    if quantization is not None:
        from safetensors.torch import save_file

        from tunelab.compress.qstate import to_tensors

        save_file(to_tensors(model.state_dict()), str(staging / "quantized.safetensors"))
        extra["quantization"] = quantization
    elif is_peft(model) or bottleneck_settings(model) is not None:
        name = portable_base_name(loaded)
        extra |= save_adapted(model, staging, loaded.kind == "module", name, max_length) | {"base_source": loaded.spec}
    elif isinstance(model, PooledClassifier):
        save_pooled(model, staging, max_length)
    elif loaded.kind == "hf":
        model.save_pretrained(staging, safe_serialization=True)
    else:
        save_safetensors(model, str(staging / "model.safetensors"))
    for processor in (loaded.tokenizer, loaded.image_processor):
        if processor is not None and loaded.kind == "hf":
            processor.save_pretrained(staging)
    meta = (
        extra
        | labels.to_meta()
        | {
            "format_version": FORMAT_VERSION,
            "kind": loaded.kind,
            "source": loaded.spec or loaded.source,  # "minilm", not the folder inside this machine's venv
            "init_kwargs": loaded.init_kwargs,
            "task": task,
            "labels": list(labels.names),
            "preprocessing": loaded.preprocessing,
        }
    )
    write_json(staging / TUNELAB_META, meta)
    write_json(staging / LABEL_MAP, {"id2label": labels.id2label, "label2id": labels.label2id})


def record_labels(model: nn.Module, labels) -> None:
    """The run's labels in the model's Hugging Face config, so every ``config.json`` names them
    (a pooled classifier's encoder config too: transformers sizes a head from it)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "id2label"):
        config.id2label = dict(labels.id2label)
        config.label2id = dict(labels.label2id)
