"""The base model's own head, kept beside the new one while the model learns a new task.

``HeadTap`` hooks the model's head module while active (``with tap:``): every forward pass then also
records the head's input (the features, for drift) and, given the old head, the old task's logits
on those features. A hook keeps the model as it is (its forward, its saved weights, DDP's view of
it): the old head is frozen and not part of the model. Outside ``with`` no hook is attached, so
training passes that need neither pay nothing for it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy


def own_head(config) -> tuple[nn.Module, object] | None:
    """The base model with its own trained head for the run's kind of task, and that head's
    targets; None when the base has none (a random built-in, a pretrained encoder without a head,
    a sentence classifier under a tagger)."""
    from tunelab.models import load_model
    from tunelab.models.loading import own_head_labels
    from tunelab.tasks import get_task

    names, trained_for = own_head_labels(config)
    per_token = trained_for == "token-classification"
    if len(names) < 2 or trained_for is not None and per_token != (config.task == "token-classification"):
        return None
    labels = get_task(config).saved_targets({"labels": list(names)})
    loaded = load_model(config, labels)
    if loaded.fresh_head:  # the folder's label names came without trained head weights
        return None
    return loaded.model.requires_grad_(False).eval(), labels


def frozen_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).requires_grad_(False).eval()


def head_name(model: nn.Module) -> str:
    heads = anatomy(_inner(model)).head
    if len(heads) != 1:
        raise UserError(f"retain: the model's head is {len(heads)} modules ({heads}); one is needed to keep it")
    return heads[0]


def head_module(model: nn.Module) -> nn.Module:
    return _inner(model).get_submodule(head_name(model))


def _inner(model: nn.Module) -> nn.Module:
    """The model inside a PEFT wrapper (its head keeps the name it had)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class HeadTap:
    """Records, inside ``with tap:`` (which may nest), the head's input and the old head's logits on it."""

    def __init__(self, model: nn.Module, old_head: nn.Module | None = None):
        self.old_head = old_head
        self.head = head_module(model)
        self.features: torch.Tensor | None = None
        self.old_logits: torch.Tensor | None = None
        self._handle = None
        self._depth = 0

    def _record(self, module: nn.Module, inputs: tuple, output) -> None:
        self.features = inputs[0]
        if self.old_head is not None:
            self.old_logits = self.old_head(inputs[0])

    def old_logits_of(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """The old head's logits for ``inputs`` through ``model``."""
        with self:
            model(**inputs)
        return self.old_logits

    def to(self, device) -> HeadTap:
        if self.old_head is not None:
            self.old_head.to(device)
        return self

    def __enter__(self) -> HeadTap:
        if self._depth == 0:
            self._handle = self.head.register_forward_hook(self._record)
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._handle.remove()
            self._handle = None
