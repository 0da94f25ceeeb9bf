"""Optimizers, with no weight decay on biases and normalisation weights."""

from __future__ import annotations

import torch
from torch import nn

from tunelab.config import OptimConfig

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Biases and every weight of a normalisation layer (LayerNorm, BatchNorm, RMSNorm, ...)."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name == "bias":
                names.add(full_name)
    return names


def decay_groups(model: nn.Module, lr: float, weight_decay: float, trainable_only: bool = True) -> list[dict]:
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if trainable_only and not parameter.requires_grad:
            continue
        (no_decay if name in skip else decay).append(parameter)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(groups: list[dict], config: OptimConfig) -> torch.optim.Optimizer:
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, eps=config.eps, momentum=config.momentum)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
