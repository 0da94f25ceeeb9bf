"""Penalties added to the task loss to keep what the base model knew.

- EWC (Kirkpatrick et al., 2017): ``strength / 2 * sum_i F_i (w_i - w*_i)^2``, with ``F`` the
  diagonal Fisher information of the old task at the base weights ``w*``.
- L2-SP (Li et al., 2018): ``strength / 2 * sum_i (w_i - w0_i)^2``, a pull toward the pretrained
  weights rather than toward zero; the new head is not pulled (it has no pretrained value).
- LwF (Li and Hoiem, 2016): ``strength * T^2 * KL(teacher || student)`` on softened old-task
  outputs of the new data, the teacher being the frozen base model.

Written here because no maintained library offers them for arbitrary ``nn.Module``s inside a
training loop of one's own (Avalanche ships its own trainer and pins its own torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.evaluate import model_inputs


class WeightPull:
    """``strength / 2 * sum_i importance_i * (w_i - anchor_i)^2`` over the named parameters.

    With unit importance this is L2-SP; with the diagonal Fisher it is EWC. ``anchor`` and
    ``importance`` are kept as plain tensors (saved with checkpoints by the caller).
    """

    def __init__(self, anchor: dict[str, torch.Tensor], strength: float, importance: dict | None = None):
        self.anchor, self.strength, self.importance = anchor, strength, importance

    def __call__(self, model: nn.Module) -> torch.Tensor:
        parameters = dict(model.named_parameters())
        total = None
        for name, anchor in self.anchor.items():
            weight = parameters[name]
            squared = (weight - anchor.to(weight.device)).pow(2)
            if self.importance is not None:
                squared = squared * self.importance[name].to(weight.device)
            term = squared.sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.strength * total


def anchor_weights(model: nn.Module, head_prefix: str) -> dict[str, torch.Tensor]:
    """A copy of every weight but the new head's, as it is now (the base model's), whether or not it
    trains yet: progressive unfreezing opens frozen blocks later."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith(head_prefix)}


def diagonal_fisher(model: nn.Module, logits_of, batches, names: list[str], examples: int, seed: int) -> dict:
    """Mean over ``examples`` rows of the squared gradient of log p(y | x) for y drawn from the
    model's own prediction (the Fisher information, not the "empirical" one on given labels), one
    row at a time so each row's gradient is its own. ``logits_of(model, inputs)`` gives the logits
    of the task the Fisher is for; ``batches`` yield model inputs."""
    parameters = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(parameters[name]) for name in names}
    generator = torch.Generator().manual_seed(seed)
    seen = 0
    was_training = model.training
    model.eval()  # dropout off: the Fisher of the model as it predicts
    for batch in batches:
        inputs = model_inputs(batch)
        count = len(next(iter(inputs.values())))
        for row in range(count):
            if seen == examples:
                break
            model.zero_grad(set_to_none=True)
            logits = logits_of(model, {key: value[row : row + 1] for key, value in inputs.items()})
            log_probabilities = F.log_softmax(logits.float(), dim=-1)[0]
            drawn = torch.multinomial(log_probabilities.detach().exp().cpu(), 1, generator=generator).item()
            log_probabilities[drawn].backward()
            for name in names:
                if parameters[name].grad is not None:
                    fisher[name] += parameters[name].grad.detach().pow(2)
            seen += 1
        if seen == examples:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: value / max(seen, 1) for name, value in fisher.items()}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean (Hinton et al., 2015)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")
