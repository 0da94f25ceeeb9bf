"""The training loss: the task's own loss on the batch, plus a list of terms.

One composition serves every command: ``train`` (the task alone, or with what guards against
forgetting: EWC, L2-SP, LwF, replay), ``distill`` (a teacher's softened outputs and features)
and ``continual`` (each method's terms for the task being learned). A term may

- add rows to the batch before the forward pass (replay), which then follow the batch's own;
- hold a context open around the forward pass (a tap on the head that records its input and an
  old head's outputs);
- give its value from the shared forward pass, or None when it has nothing for this batch;
- keep state a checkpoint saves (``state_dict``), such as how many replay draws were made.

Written here because the loss of a loop of one's own has no library home: PyTorch gives the
losses, not their composition with taps and joined rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tunelab.evaluate import model_inputs, output_logits
from tunelab.forgetting.replay import joined


@dataclass
class ForwardPass:
    """One forward pass, shared by the terms."""

    model: torch.nn.Module
    batch: dict  # as the loader gave it
    logits: torch.Tensor  # of every row the model saw: the batch's own first, then added rows
    rows: int  # how many of them are the batch's own
    added: dict = field(default_factory=dict)  # term name -> the rows it added, collated
    memo: dict = field(default_factory=dict)  # what several terms read once (a teacher's outputs)

    def once(self, key: str, compute: Callable):
        """``compute()``, called at most once per pass."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


class LossTerm:
    """One term of the loss, ``weight * value``. Subclasses set ``name`` and ``value``."""

    name = "term"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def rows(self, device) -> dict | None:
        """Rows to add to the batch for this pass (collated, on ``device``), or None."""
        return None

    def watching(self):
        """A context held around the forward pass (a tap), or None."""
        return None

    def value(self, forward: ForwardPass) -> torch.Tensor | None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TrainingLoss:
    """``loss_fn(model, batch)`` for the loop: ``task_weight`` times the task's loss on the batch's
    own rows, plus each term's weighted value. ``last`` holds the latest unweighted parts."""

    def __init__(self, task, terms: list[LossTerm] = (), weights=None, task_weight: float = 1.0, pad_token_id=0):
        self.task, self.terms, self.weights = task, list(terms), weights
        self.task_weight, self.pad_token_id = task_weight, pad_token_id
        self.last: dict[str, torch.Tensor] = {}

    def __call__(self, model, batch: dict) -> torch.Tensor:
        inputs, labels = model_inputs(batch), batch["labels"]
        added = {}
        for term in self.terms:
            rows = term.rows(labels.device)
            if rows is not None:
                inputs = joined(inputs, model_inputs(rows), self.pad_token_id)
                added[term.name] = rows
        with contextlib.ExitStack() as watching:
            for context in {id(c): c for c in (term.watching() for term in self.terms) if c is not None}.values():
                watching.enter_context(context)
            logits = output_logits(model(**inputs))
        forward = ForwardPass(model, batch, logits, len(labels), added)
        own = logits[: len(labels)] if added else logits
        loss = self.task.loss(own, labels, self.weights)
        self.last = {"task": loss.detach()}
        if self.task_weight != 1.0:
            loss = self.task_weight * loss
        for term in self.terms:
            value = term.value(forward)
            if value is None:
                continue
            self.last[term.name] = value.detach()
            loss = loss + (value if term.weight == 1.0 else term.weight * value).to(loss.device)
        return loss

    def state_dict(self) -> dict:
        return {term.name: state for term in self.terms if (state := term.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        for term in self.terms:
            if term.name in state:
                term.load_state_dict(state[term.name])
