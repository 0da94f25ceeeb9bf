"""Save and reload models a parameter-efficient strategy wrapped: PEFT adapters and bottleneck adapters.

Only what trained is written. A PEFT model goes out in PEFT's own format (``adapter_config.json``
with the base model's portable name, ``adapter_model.safetensors``, and the classifier's
``config.json`` with the run's labels), so ``AutoPeftModelForSequenceClassification`` loads it
without tunelab. On a pooled classifier the adapter is the encoder's, in the sentence-transformers
layout beside the head (``SentenceTransformer(folder)`` loads it). Bottleneck adapters go to
``adapter.safetensors`` with their placement in ``tunelab.json``. Reloading rebuilds the base model
from ``base_source`` and puts the adapter on; a saved adapter that lacks any of its weights is refused.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from tunelab.errors import UserError, first_line
from tunelab.io import read_safetensors

ADAPTER_WEIGHTS = "adapter.safetensors"
BASE_STATE = "base_state.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PEFT names the wrapped model's weights in its files
ENCODER_PREFIX = PEFT_PREFIX + "encoder."  # ... and a pooled classifier's encoder inside it


def is_peft(model: nn.Module) -> bool:
    """Whether PEFT wraps ``model``; a model PEFT made implies PEFT is imported, so a process
    that never used it does not import it (a sixth of a second) to find out."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def bottleneck_settings(model: nn.Module) -> dict | None:
    """Where bottleneck adapters sit and how they are built, or None when there are none."""
    from tunelab.strategies.adapter import ADAPTER, Bottleneck

    targets = [name for name, module in model.named_modules() if isinstance(getattr(module, ADAPTER, None), Bottleneck)]
    if not targets:
        return None
    first = getattr(model.get_submodule(targets[0]), ADAPTER)
    return {"targets": targets} | first.settings


@contextmanager
def without_adapter(model: nn.Module, unwrapped: nn.Module):
    """Yield what computes the base model: ``model`` with a PEFT adapter switched off, or the
    model under virtual tokens (they start random, so they are not the base model). LoRA, IA3
    and bottleneck adapters start as the identity, but switching off is exact, not a float claim."""
    if not is_peft(unwrapped):
        yield model
    elif unwrapped.active_peft_config.is_prompt_learning:
        # PEFT's disable_adapter() fails here for classifiers (it looks for generation hooks).
        yield unwrapped.base_model
    else:
        with unwrapped.disable_adapter():
            yield model


def save_adapted(model: nn.Module, staging: Path, whole_base: bool, base_name: str | None, max_length: int) -> dict:
    """Write the adapter into ``staging``; return what ``tunelab.json`` must record about it.

    Beside it goes what the base model's folder cannot give back: the running statistics of its
    batch norms (they move while an adapter trains), and, for a base without weights on disk
    (``whole_base``: a built-in or ``module:function`` model), every base weight. ``base_name``
    is what the adapter config names as its base (a Hub id or a folder; None for plain modules).
    """
    base_state = _base_state(model, whole_base)
    if base_state:
        save_file(base_state, str(staging / BASE_STATE))
    if not is_peft(model):
        trained = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(staging / ADAPTER_WEIGHTS))
        return {"adapter": bottleneck_settings(model)}
    from tunelab.models.pooled import PooledClassifier

    settings = model.peft_config["default"]
    base = model.get_base_model()
    if isinstance(base, PooledClassifier):
        _save_encoder_adapter(model, base, staging, base_name, max_length)
    else:
        settings.base_model_name_or_path = base_name
        model.save_pretrained(staging, safe_serialization=True)
        if getattr(base, "config", None) is not None and hasattr(base.config, "save_pretrained"):
            base.config.save_pretrained(staging)  # the classifier's labels, for AutoPeftModel...(num_labels=...)
    return {"peft": str(settings.peft_type.value)}


def _save_encoder_adapter(model, base, staging: Path, base_name: str | None, max_length: int) -> None:
    """A pooled classifier's adapter as the encoder's own (PEFT names relative to the encoder),
    with the pooling and head in the sentence-transformers layout."""
    import copy

    from peft import get_peft_model_state_dict

    from tunelab.models.sentence_layout import write_sentence_layout

    settings = copy.deepcopy(model.peft_config["default"])
    settings.base_model_name_or_path, settings.task_type = base_name, "FEATURE_EXTRACTION"
    settings.modules_to_save, settings.auto_mapping, settings.inference_mode = None, None, True
    state = get_peft_model_state_dict(model)  # the head here is the trained copy PEFT keeps
    encoder_state = {
        PEFT_PREFIX + name[len(ENCODER_PREFIX) :]: value.detach().cpu().contiguous()
        for name, value in state.items()
        if name.startswith(ENCODER_PREFIX)
    }
    settings.save_pretrained(staging)
    save_file(encoder_state, str(staging / PEFT_WEIGHTS))
    head = {key: state[f"{PEFT_PREFIX}classifier.{key}"] for key in ("weight", "bias")}
    write_sentence_layout(staging, head, base.pooling, max_length)


def _load_encoder_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """The inverse of ``_save_encoder_adapter``: PEFT on the whole pooled classifier again (the
    head trainable through ``modules_to_save``, as in training), filled from the saved files."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    from tunelab.models.pooled import saved_classifier
    from tunelab.models.sentence_layout import DENSE_WEIGHTS

    settings = PeftConfig.from_pretrained(folder)
    settings.task_type, settings.modules_to_save, settings.inference_mode = None, ["classifier"], True
    with warnings.catch_warnings():  # that the base's name is not the pooled classifier's: as intended
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
        wrapped = get_peft_model(model, settings)
    saved = read_safetensors(folder / PEFT_WEIGHTS, f"{folder}: ")
    state = {ENCODER_PREFIX + name[len(PEFT_PREFIX) :]: value for name, value in saved.items()}
    head = saved_classifier(folder, f"{folder}: ")
    if head is None:
        raise UserError(f"{folder}: the saved adapter lacks its classifier ({DENSE_WEIGHTS})")
    state |= {f"{PEFT_PREFIX}classifier.{key}": value for key, value in head.items()}
    _require_every_adapter_weight(wrapped, set(state), folder)
    set_peft_model_state_dict(wrapped, state)
    return wrapped


def _require_every_adapter_weight(wrapped: nn.Module, saved: set[str], folder: Path) -> None:
    """Refuse an adapter file that lacks weights the adapter has (``saved``: the names it holds):
    PEFT would leave them at their initial values (LoRA's B at zero, a random head) and the model
    would silently be another one."""
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(wrapped))
    missing = sorted(expected - saved)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{folder}: the saved adapter lacks {len(missing)} of its weights ({shown})")


def _tensor_names(path: Path) -> set[str]:
    """The names in a safetensors file, read from its header alone (PEFT has just read the tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return set(weights.keys())


def _base_state(model: nn.Module, whole_base: bool) -> dict:
    """The base model's own tensors under its own names (PEFT's wrappers and the adapter left out)."""
    from tunelab.strategies.adapter import ADAPTER

    base = model.get_base_model() if is_peft(model) else model
    buffers = {name for name, _ in base.named_buffers()}
    adapter_parts = ("lora_", "ia3_", "modules_to_save.", "original_module.", f".{ADAPTER}.")
    state = {}
    for name, value in base.state_dict().items():
        if any(part in name for part in adapter_parts) or not (whole_base or name in buffers):
            continue
        state[name.replace(".base_layer.", ".")] = value.detach().cpu().contiguous()
    return state


def load_adapted(model: nn.Module, folder: Path, meta: dict) -> nn.Module:
    """Put the saved adapter of ``folder`` on the freshly built base ``model``."""
    if (folder / BASE_STATE).exists():
        _load_checked(model, folder / BASE_STATE)
    if meta.get("peft"):
        from peft import PeftModel

        from tunelab.models.pooled import PooledClassifier

        try:
            if isinstance(model, PooledClassifier) and (folder / "modules.json").exists():
                return _load_encoder_adapter(model, folder)
            wrapped = PeftModel.from_pretrained(model, folder)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise UserError(f"{folder}: cannot load the PEFT adapter: {first_line(error)}") from None
        _require_every_adapter_weight(wrapped, _tensor_names(folder / PEFT_WEIGHTS), folder)
        return wrapped
    from tunelab.strategies.adapter import add_adapters

    settings = meta["adapter"]
    add_adapters(model, settings["targets"], settings["reduction_factor"], settings["activation"])
    _load_checked(model, folder / ADAPTER_WEIGHTS)
    return model


def _load_checked(model: nn.Module, weights_file: Path) -> None:
    saved = read_safetensors(weights_file)
    own = model.state_dict()
    unfit = sorted(name for name in saved if name not in own or own[name].shape != saved[name].shape)
    if unfit:
        raise UserError(f"{weights_file} has weights the model does not: {unfit[:3]}")
    model.load_state_dict(saved, strict=False)


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights, or explain why that cannot be done."""
    if bottleneck_settings(model) is not None:
        raise UserError(
            "export --merge: bottleneck adapters add non-linear layers, which cannot fold into the base weights; "
            "the run's model/ folder loads with tunelab as it is"
        )
    if not is_peft(model):
        return model
    try:
        return model.merge_and_unload()
    except (AttributeError, ValueError, NotImplementedError) as error:
        method = model.peft_config["default"].peft_type.value
        reason = first_line(error)
        raise UserError(f"export --merge: {method} cannot be merged into the base weights ({reason})") from None
