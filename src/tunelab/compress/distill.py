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
from tunelab.evaluate import model_inputs, output_logits
from tunelab.forgetting.regularizers import distillation_loss
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


class DistillationLoss:
    """``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(labels)``, plus ``hidden`` times the
    mean squared distance between the two models' head inputs when their shapes agree."""

    def __init__(self, teacher: nn.Module, settings, student_tap=None, teacher_tap=None, weights=None):
        self.teacher = teacher.requires_grad_(False).eval()
        self.settings, self.weights = settings, weights
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    def __call__(self, model, batch: dict) -> torch.Tensor:
        inputs = model_inputs(batch)
        settings = self.settings
        with self.student_tap or contextlib.nullcontext():
            student = output_logits(model(**inputs)).float()
        with torch.no_grad(), self.teacher_tap or contextlib.nullcontext():
            teacher = output_logits(self.teacher(**inputs)).float()
        weights = None if self.weights is None else self.weights.to(student.device)
        hard = F.cross_entropy(student, batch["labels"], weight=weights)
        loss = settings.alpha * distillation_loss(student, teacher, settings.temperature) + (1 - settings.alpha) * hard
        if settings.hidden > 0 and self.student_tap is not None:
            mine, theirs = self.student_tap.features, self.teacher_tap.features
            if mine.shape == theirs.shape:
                loss = loss + settings.hidden * F.mse_loss(mine.float(), theirs.float())
        return loss
