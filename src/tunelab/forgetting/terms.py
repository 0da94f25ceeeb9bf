"""The loss terms that keep what the base model knew, for ``tunelab.loss.TrainingLoss``: a pull
toward earlier weights (EWC, L2-SP), distillation from the base model's own head (LwF) and the
old task's loss on replayed rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.evaluate import model_inputs, output_logits
from tunelab.forgetting.regularizers import WeightPull, distillation_loss
from tunelab.forgetting.replay import Replay
from tunelab.loss import ForwardPass, LossTerm


class Pull(LossTerm):
    """EWC or L2-SP: ``pull(model)``, its strength inside it."""

    def __init__(self, name: str, pull: WeightPull, model: torch.nn.Module):
        super().__init__()
        self.name, self.pull, self.model = name, pull, model

    def value(self, forward: ForwardPass) -> torch.Tensor:
        return self.pull(self.model)


class OldHeadReplay(LossTerm):
    """Retain rows added to each batch, scored by the base model's own head through ``tap``."""

    name = "replay"

    def __init__(self, replay: Replay, tap, weight: float = 1.0):
        super().__init__(weight)
        self.replay, self.tap = replay, tap

    def rows(self, device) -> dict:
        return self.replay.draw(device)

    def watching(self):
        return self.tap

    def value(self, forward: ForwardPass) -> torch.Tensor:
        return F.cross_entropy(self.tap.old_logits[forward.rows :].float(), forward.added[self.name]["labels"])

    def state_dict(self) -> dict:
        return self.replay.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.replay.load_state_dict(state)


class LearningWithoutForgetting(LossTerm):
    """The old head's outputs on the new rows kept close to the frozen base model's (LwF)."""

    name = "lwf"

    def __init__(self, teacher: torch.nn.Module, tap, strength: float, temperature: float):
        super().__init__(strength)
        self.teacher, self.tap, self.temperature = teacher, tap, temperature

    def watching(self):
        return self.tap

    def value(self, forward: ForwardPass) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = output_logits(self.teacher(**model_inputs(forward.batch)))
        return distillation_loss(self.tap.old_logits[: forward.rows], teacher_logits, self.temperature)
