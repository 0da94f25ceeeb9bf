"""Post-training int8 quantization with PyTorch's own flows (``torch.ao.quantization``).

- dynamic: weights of every ``nn.Linear`` stored as int8 per output channel, activations
  quantized on the fly (fbgemm/x86 kernels), and embedding tables stored as 8-bit rows: the flow
  for transformers such as BERT, whose word embeddings are a third of its weights. Per-channel
  weights keep MiniLM's SST-2 accuracy within a point where per-tensor ones lose 1.5.
- static: FX graph mode; observers record activation ranges on a few hundred training rows, then
  convolutions and linear layers run in int8 end to end: the flow for CNNs. It needs a model FX
  can trace (the built-in CNNs and plain modules; not Hugging Face transformers).

PyTorch marks these flows deprecated in favour of torchao, whose CPU int8 path needs
``torch.compile``; until that is the faster path on CPU, these are the kernels that deliver
(the issue's anchor, PyTorch's BERT tutorial, uses them). Their deprecation warnings are silenced
here and only here.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn

from tunelab.errors import UserError

BACKEND = "x86"
METHODS = ("dynamic", "static", "qat")


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def quantized(model: nn.Module, method: str, example: dict | None = None, batches=()) -> nn.Module:
    """An int8 copy of ``model`` (left as it is). ``example`` is one batch of model inputs (static
    only); ``batches`` calibrate the static observers (none: the skeleton a saved one loads into)."""
    torch.backends.quantized.engine = BACKEND
    model = copy.deepcopy(model).eval().cpu()
    with quiet(), torch.inference_mode(False), torch.no_grad():
        if method == "dynamic":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
            from torch.ao.quantization.qconfig import float_qparams_weight_only_qconfig

            spec = {nn.Linear: per_channel_dynamic_qconfig, nn.Embedding: float_qparams_weight_only_qconfig}
            return quantize_dynamic(model, spec, dtype=torch.qint8)
        from torch.ao.quantization.quantize_fx import convert_fx

        if method == "qat":  # the skeleton a quantization-aware run loads into
            return convert_fx(aware(model, example).eval())
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx

        try:
            prepared = prepare_fx(model, get_default_qconfig_mapping(BACKEND), example_inputs=tuple(example.values()))
        except Exception as error:  # FX raises many kinds on code it cannot trace
            raise UserError(
                f"quantize --method static: this model cannot be traced for static quantization "
                f"({type(error).__name__}); use --method dynamic"
            ) from None
        for batch in batches:
            prepared(**batch)
        return convert_fx(prepared)


def aware(model: nn.Module, example: dict) -> nn.Module:
    """``model`` with fake quantization inserted (quantization-aware training, FX graph mode):
    it trains in float while every weight and activation is rounded as int8 would round it."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = BACKEND
    with quiet():
        try:
            return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping(BACKEND), tuple(example.values()))
        except Exception as error:  # FX raises many kinds on code it cannot trace
            raise UserError(
                f"train.quantization_aware: this model cannot be traced for quantization ({type(error).__name__}); "
                "quantization-aware training needs the built-in CNNs or a plain module"
            ) from None


@contextlib.contextmanager
def quantizers_paused(model: nn.Module, fake_quant: bool = False):
    """Observers of a quantization-aware model off inside this block (they keep observing in eval
    mode, so a measurement would move their ranges and let the rows it reads calibrate them), and
    with ``fake_quant`` fake quantization too; every switch is restored after it. A model without
    fake quantizers is left alone."""
    from torch.ao.quantization import FakeQuantizeBase

    quantizers = [module for module in model.modules() if isinstance(module, FakeQuantizeBase)]
    switches = [(module.fake_quant_enabled.clone(), module.observer_enabled.clone()) for module in quantizers]
    for module in quantizers:
        module.disable_observer()
        if fake_quant:
            module.disable_fake_quant()
    try:
        yield model
    finally:
        for module, (fake_quantizing, observing) in zip(quantizers, switches, strict=True):
            module.fake_quant_enabled.copy_(fake_quantizing)
            module.observer_enabled.copy_(observing)


def measured_as_float(model: nn.Module):
    """Before training, a quantization-aware model is the float model it came from: its fake
    quantizers have seen nothing yet (scale 1, no range), so measuring through them would score
    noise. Fake quantization and observers are off inside this block."""
    return quantizers_paused(model, fake_quant=True)


def converted(model: nn.Module) -> nn.Module:
    """The int8 model a quantization-aware one becomes (on the CPU; the trained model is kept)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.backends.quantized.engine = BACKEND
    with quiet(), torch.no_grad():
        return convert_fx(copy.deepcopy(model).cpu().eval())
