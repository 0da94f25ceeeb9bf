"""LoRA, IA3, prefix and prompt tuning, through PEFT.

The base model is wrapped by ``peft.get_peft_model``; the head (and any weight the base
checkpoint lacked, such as a fresh pooler) stays fully trainable through PEFT's
``modules_to_save``, so it is saved with the adapter. The run's ``model/`` folder then holds the
adapter alone, in PEFT's own format: ``PeftModel.from_pretrained(base, folder)`` loads it.
"""

from __future__ import annotations

from torch import nn

from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy
from tunelab.strategies.base import Strategy

CONV_AND_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PeftStrategy(Strategy):
    """Shared wrapping; subclasses give the PEFT config."""

    method = ""
    needs_transformer = False
    peft = True

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        if self.needs_transformer and type(model).__name__ == "PooledClassifier":
            raise UserError(
                f"strategy {self.name}: virtual tokens need transformers' own classification head; "
                "set model.pooling: head"
            )
        if self.needs_transformer and not _is_text_transformer(model):
            raise UserError(f"strategy {self.name}: needs a Hugging Face text transformer model")
        head = anatomy(model).head
        # Fresh weights inside the head are saved with it; naming their own modules as well would
        # nest PEFT wrappers, and the copy the forward pass uses would stay frozen (RoBERTa's head).
        outside_head = {m for m in _modules_of(model, self.fresh) if not any(_within(m, h) for h in head)}
        to_save = sorted(set(head) | outside_head)
        try:
            return get_peft_model(model, self.peft_config(model, to_save))
        except (ValueError, TypeError) as error:
            raise UserError(f"strategy {self.name}: PEFT cannot wrap this model: {error}") from None

    def peft_config(self, model: nn.Module, modules_to_save: list[str]):
        raise NotImplementedError

    def describe(self, model: nn.Module) -> dict:
        peft_config = model.peft_config["default"].to_dict()
        keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora", "num_virtual_tokens")
        return {"method": self.method} | {
            key: sorted(value) if isinstance(value, set) else value
            for key, value in peft_config.items()
            if key in keep and value is not None
        }


class LoraStrategy(PeftStrategy):
    name = method = "lora"
    rate_factor = 10.0

    def peft_config(self, model: nn.Module, modules_to_save: list[str]):
        from peft import LoraConfig

        lora = self.config.lora
        return LoraConfig(
            task_type=_task_type(model),
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules or lora_targets(model, modules_to_save),
            modules_to_save=modules_to_save,
            use_dora=lora.use_dora,
            use_rslora=lora.use_rslora,
        )


class Ia3Strategy(PeftStrategy):
    name = method = "ia3"
    rate_factor = 50.0

    def peft_config(self, model: nn.Module, modules_to_save: list[str]):
        from peft import IA3Config
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
        )

        ia3 = self.config.ia3
        model_type = _model_type(model)
        targets = ia3.target_modules or TARGETS.get(model_type)
        feedforward = ia3.feedforward_modules
        if feedforward is None:  # PEFT's default list, kept to the targets (it must be a subset of them)
            feedforward = [m for m in FEEDFORWARD.get(model_type) or [] if targets and m in targets]
        if targets is None:  # not a model PEFT knows: scale every linear layer, none as feed-forward input
            targets, feedforward = lora_targets(model, modules_to_save), []
        return IA3Config(
            task_type=_task_type(model),
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=modules_to_save,
        )


class VirtualTokensStrategy(PeftStrategy):
    """Prefix and prompt tuning: learned virtual tokens, configured alike under their own section."""

    needs_transformer = True
    peft_config_class = ""

    def peft_config(self, model: nn.Module, modules_to_save: list[str]):
        import peft

        return getattr(peft, self.peft_config_class)(
            task_type=_task_type(model) or "SEQ_CLS",
            num_virtual_tokens=getattr(self.config, self.name).num_virtual_tokens,
            modules_to_save=modules_to_save,
        )


class PrefixStrategy(VirtualTokensStrategy):
    name = method = "prefix"
    rate_factor = 100.0
    compared_by_default = False
    peft_config_class = "PrefixTuningConfig"


class PromptStrategy(VirtualTokensStrategy):
    name = method = "prompt"
    rate_factor = 200.0
    compared_by_default = False
    peft_config_class = "PromptTuningConfig"


ATTENTION_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("c_attn",), ("qkv",), ("Wqkv",))


def lora_targets(model: nn.Module, exclude: list[str]) -> list[str]:
    """Attention query and value projections, as the LoRA paper adapts: PEFT's own choice for the
    architectures it maps (BERT: query, value; GPT-2: c_attn; T5: q, v), else the first naming
    scheme this model uses (transformers 5 names ViT's q_proj, v_proj); for models without
    attention, every linear and convolution layer outside the head."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    excluded = tuple(f"{name}." for name in exclude)
    layers = [
        name
        for name, module in model.named_modules()
        if (isinstance(module, CONV_AND_LINEAR) or type(module).__name__ == "Conv1D")
        and not (name + ".").startswith(excluded)
    ]
    last_parts = {name.rsplit(".", 1)[-1] for name in layers}
    known = KNOWN.get(_model_type(model))
    for candidate in ([tuple(known)] if known else []) + list(ATTENTION_TARGETS):
        if set(candidate) <= last_parts:
            return list(candidate)
    if not layers:
        raise UserError("strategy: no linear or convolution layer outside the head to adapt")
    return layers


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _is_text_transformer(model: nn.Module) -> bool:
    return _model_type(model) is not None and hasattr(model, "get_input_embeddings")


def _task_type(model: nn.Module) -> str | None:
    """SEQ_CLS or TOKEN_CLS for Hugging Face text and token classifiers; None (a plain PeftModel) for
    anything else."""
    name = type(model).__name__
    kinds = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS"}
    return next((kind for suffix, kind in kinds.items() if name.endswith(suffix)), None)


def _modules_of(model: nn.Module, parameter_names: list[str]) -> set[str]:
    """The modules holding freshly initialised weights (outside the head), so they train too."""
    owners = set()
    for name in parameter_names:
        owner = name.rsplit(".", 1)[0]
        if owner and owner != name and _has_module(model, owner):
            owners.add(owner)
    return owners


def _within(module: str, ancestor: str) -> bool:
    return module == ancestor or module.startswith(ancestor + ".")


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
