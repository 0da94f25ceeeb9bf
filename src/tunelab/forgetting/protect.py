"""The training loss when forgetting is guarded against: the new task's cross-entropy, plus the
penalties (EWC, L2-SP), the distillation (LwF) and the replayed rows the config asks for.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from tunelab.evaluate import model_inputs, output_logits
from tunelab.forgetting.regularizers import WeightPull, distillation_loss
from tunelab.forgetting.replay import Replay, joined


class ProtectedLoss:
    """``loss_fn(model, batch)`` for the loop; its replay position is checkpointed (state_dict)."""

    def __init__(
        self,
        tap,
        pulls: list[WeightPull],
        unwrapped,
        class_weights: torch.Tensor | None = None,
        teacher=None,
        lwf=None,
        replay: Replay | None = None,
        replay_weight: float = 1.0,
        pad_token_id: int = 0,
    ):
        self.tap, self.pulls, self.unwrapped = tap, pulls, unwrapped
        self.class_weights, self.teacher, self.lwf = class_weights, teacher, lwf
        self.replay, self.replay_weight, self.pad_token_id = replay, replay_weight, pad_token_id
        self.last: dict[str, torch.Tensor] = {}  # the parts of the latest loss, for tests and inspection

    def __call__(self, model, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        inputs = model_inputs(batch)
        new_rows = len(labels)
        replayed = self.replay.draw(labels.device) if self.replay else None
        if replayed is not None:
            inputs = joined(inputs, model_inputs(replayed), self.pad_token_id)
        needs_old_head = self.lwf is not None or replayed is not None
        with self.tap if needs_old_head else contextlib.nullcontext():
            logits = output_logits(model(**inputs))[:new_rows]
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        loss = F.cross_entropy(logits.float(), labels, weight=weights)
        self.last = {"task": loss.detach()}
        if replayed is not None:
            old = self.tap.old_logits[new_rows:].float()
            replay_loss = F.cross_entropy(old, replayed["labels"])
            loss = loss + self.replay_weight * replay_loss
            self.last["replay"] = replay_loss.detach()
        if self.lwf is not None:
            with torch.no_grad():
                teacher_logits = output_logits(self.teacher(**model_inputs(batch)))
            distilled = distillation_loss(self.tap.old_logits[:new_rows], teacher_logits, self.lwf.temperature)
            loss = loss + self.lwf.strength * distilled
            self.last["lwf"] = distilled.detach()
        for name, pull in self.pulls:
            penalty = pull(self.unwrapped)
            loss = loss + penalty.to(loss.device)
            self.last[name] = penalty.detach()
        return loss

    def state_dict(self) -> dict:
        return self.replay.state_dict() if self.replay else {}

    def load_state_dict(self, state: dict) -> None:
        if self.replay:
            self.replay.load_state_dict(state)
