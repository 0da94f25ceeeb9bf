"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) on any model with linear or
convolutional blocks.

Written here because the adapter library (AdapterHub's ``adapters``) pins transformers 4.x and
PEFT has no bottleneck adapters. The implementation is generic rather than per-architecture:
in each block (the model's longest ``nn.ModuleList``) it finds the feed-forward output
projection (the last linear layer that narrows its input, 4h -> h) and, for ``houlsby``, the
attention output projection (a square linear layer under an attention module that is not a
query, key or value). An adapter ``y + up(act(down(y)))`` is added after each, as a child module
and a forward hook, so the original parameter names and forward code stay as they were. ``up``
starts at zero, so the adapted model starts exactly as the base model.

In a convolutional block (no linear layers) the adapter is a residual 1x1-convolution
bottleneck after the block's last convolution, as in Rebuffi et al.'s residual adapters (2017).

What trains: the adapters, the normalisation layers (as in all three papers) and the head.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.engine.optim import norm_parameter_names
from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy
from tunelab.strategies.base import Strategy

ADAPTER = "adapter"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
QKV_NAMES = ("query", "key", "value", "q", "k", "v", "q_proj", "k_proj", "v_proj", "qkv", "c_attn", "in_proj")


class Bottleneck(nn.Module):
    """``x + up(act(down(x)))``; linear over the last dimension, or 1x1 convolutions over channels."""

    def __init__(self, width: int, reduction_factor: int, activation: str, convolution: bool = False):
        super().__init__()
        hidden = max(1, width // reduction_factor)
        self.settings = {"reduction_factor": reduction_factor, "activation": activation}
        layer = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if convolution else nn.Linear
        self.down = layer(width, hidden)
        self.activation = ACTIVATIONS[activation]()
        self.up = layer(hidden, width)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


def _run_adapter(module: nn.Module, inputs, output):
    return getattr(module, ADAPTER)(output)


def add_adapters(model: nn.Module, targets: list[str], reduction_factor: int, activation: str) -> None:
    for name in targets:
        module = model.get_submodule(name)
        convolution = isinstance(module, nn.Conv2d)
        width = module.out_channels if convolution else _out_features(module)
        module.add_module(ADAPTER, Bottleneck(width, reduction_factor, activation, convolution))
        module.register_forward_hook(_run_adapter)


def adapter_targets(model: nn.Module, placement: str) -> list[str]:
    blocks = anatomy(model).blocks
    if not blocks:
        raise UserError("strategy adapter: this model has no repeated blocks (no nn.ModuleList) to adapt")
    targets = []
    for block in blocks:
        modules = list(model.get_submodule(block).named_modules())
        linears = [(f"{block}.{name}", m) for name, m in modules if _is_linear(m)]
        convolutions = [f"{block}.{name}" for name, m in modules if isinstance(m, nn.Conv2d)]
        if not linears and convolutions:
            targets.append(convolutions[-1])
            continue
        narrowing = [(name, m) for name, m in linears if _in_features(m) > _out_features(m)]
        if not narrowing:
            raise UserError(f"strategy adapter: no feed-forward output projection found in {block}")
        if placement == "houlsby":
            attention = [
                name
                for name, m in linears
                if _in_features(m) == _out_features(m)
                and any(part in ("attention", "attn", "self_attn", "selfattention") for part in name.split("."))
                and name.rsplit(".", 1)[-1] not in QKV_NAMES
            ]
            if not attention:
                raise UserError(f"strategy adapter: no attention output projection found in {block}; use pfeiffer")
            targets.append(attention[-1])
        targets.append(narrowing[-1][0])
    return targets


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.weight.shape[0]


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.weight.shape[1]


class AdapterStrategy(Strategy):
    name = "adapter"
    rate_factor = 10.0

    def apply(self, model: nn.Module) -> nn.Module:
        settings = self.config.adapter
        self.targets = adapter_targets(model, settings.placement)
        add_adapters(model, self.targets, settings.reduction_factor, settings.activation)
        parts = anatomy(model)
        fresh = set(self.fresh)
        norms = norm_parameter_names(model)
        for name, parameter in model.named_parameters():
            trains = f".{ADAPTER}." in name or name in norms or parts.in_head(name) or name in fresh
            parameter.requires_grad_(trains)
        return model

    def describe(self, model: nn.Module) -> dict:
        settings = self.config.adapter
        return {"method": "adapter", "targets": self.targets} | settings.model_dump()
