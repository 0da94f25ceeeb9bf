"""Knowledge distillation (Hinton et al., 2015): a student learns from the fine-tuned teacher's
softened outputs as well as from the labels, optionally matching the teacher's features too.

A student "every k-th layer of the teacher" is built as DistilBERT built its own: the teacher
with only some of its blocks, keeping their trained weights, so training starts from the
teacher's knowledge rather than from scratch.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import UserError
from tunelab.evaluate import IGNORED, model_inputs, output_logits
from tunelab.forgetting.regularizers import distillation_loss
from tunelab.loss import ForwardPass, LossTerm
from tunelab.strategies.anatomy import anatomy


def every_kth_layer(teacher: nn.Module, layers: int) -> tuple[nn.Module, list[int]]:
    """A copy of ``teacher`` keeping ``layers`` of its blocks, evenly spaced and ending with the
    last (for 6 blocks and 3 layers: 1, 3, 5), and which blocks were kept."""
    blocks = anatomy(teacher).blocks
    if not blocks:
        raise UserError("--student layers:N: the teacher has no repeated blocks to keep some of")
    if not 1 <= layers < len(blocks):
        raise UserError(
            f"--student layers:{layers}: choose 1 to {len(blocks) - 1} of the teacher's {len(blocks)} blocks"
        )
    step = len(blocks) / layers
    kept = [round((i + 1) * step) - 1 for i in range(layers)]
    student = copy.deepcopy(teacher)
    container = blocks[0].rsplit(".", 1)[0]
    parent_name, _, child = container.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    old = getattr(parent, child)
    setattr(parent, child, nn.ModuleList([old[i] for i in kept]))
    for config in _configs(student):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(config, key):
                setattr(config, key, layers)
    return student, kept


def _configs(model: nn.Module) -> list:
    """Every Hugging Face config inside the model (the pooled classifier keeps its encoder's)."""
    return [
        module.config for module in model.modules() if hasattr(module, "config") and hasattr(module.config, "to_dict")
    ]


def distillation_terms(teacher: nn.Module, settings, student_tap=None, teacher_tap=None) -> list[LossTerm]:
    """The terms a teacher adds to the loss (``tunelab.loss``): ``alpha`` times its softened outputs'
    KL, and ``hidden`` times the distance between the two models' head inputs when both taps are
    given. The task's own loss then weighs ``1 - alpha``."""
    teacher = teacher.requires_grad_(False).eval()
    terms = [TeacherOutputs(teacher, settings.alpha, settings.temperature, teacher_tap)]
    if settings.hidden > 0 and student_tap is not None:
        terms.append(TeacherFeatures(teacher, settings.hidden, student_tap, teacher_tap))
    return terms


def _teacher_logits(forward: ForwardPass, teacher: nn.Module, tap) -> torch.Tensor:
    """The teacher's outputs on the batch's own rows, computed once a pass (its tap records its features)."""

    def compute():
        with torch.no_grad(), tap or contextlib.nullcontext():
            return output_logits(teacher(**model_inputs(forward.batch))).float()

    return forward.once("teacher", compute)


class TeacherOutputs(LossTerm):
    """``T^2 * KL(teacher || student)`` on the softened outputs (Hinton et al., 2015)."""

    name = "distill"

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float, tap=None):
        super().__init__(alpha)
        self.teacher, self.temperature, self.tap = teacher, temperature, tap

    def value(self, forward: ForwardPass) -> torch.Tensor:
        teacher = _teacher_logits(forward, self.teacher, self.tap).float()
        student = forward.logits[: forward.rows].float()
        if student.dim() == 3:  # a distribution per token: each real token counted once, padding not at all
            kept = forward.batch["labels"] != IGNORED
            student, teacher = student[kept], teacher[kept]
        return distillation_loss(student, teacher, self.temperature)


class TeacherFeatures(LossTerm):
    """The mean squared distance between the student's and the teacher's head inputs, None when
    their shapes differ (a student of another width)."""

    name = "distill_features"

    def __init__(self, teacher: nn.Module, weight: float, student_tap, teacher_tap):
        super().__init__(weight)
        self.teacher, self.student_tap, self.teacher_tap = teacher, student_tap, teacher_tap

    def watching(self):
        return self.student_tap

    def value(self, forward: ForwardPass) -> torch.Tensor | None:
        _teacher_logits(forward, self.teacher, self.teacher_tap)  # its tap records the features
        mine, theirs = self.student_tap.features[: forward.rows], self.teacher_tap.features
        if mine.shape != theirs.shape:
            return None
        return F.mse_loss(mine.float(), theirs.float())
