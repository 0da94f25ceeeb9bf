"""The loss terms of a task sequence, for ``tunelab.loss.TrainingLoss``: rows replayed from the
memory of earlier tasks and LwF on their heads (EWC is ``forgetting.terms.Pull``). Unlike the
forgetting terms of one run, they score earlier tasks through the head each task had, which the
``HeadSwitch`` keeps beside the one being learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.continual.heads import HeadSwitch
from tunelab.engine.data_loading import to_device
from tunelab.evaluate import model_inputs, output_logits
from tunelab.forgetting.regularizers import distillation_loss
from tunelab.loss import ForwardPass, LossTerm


class MemoryReplay(LossTerm):
    """Rows drawn from the memory of earlier tasks, each scored through its own task's head (or the
    one shared head, class-incremental). ``sequence`` is the ``continual.sequence.Sequence``."""

    name = "replay"

    def __init__(self, sequence, index: int, per_batch: int, weight: float):
        super().__init__(weight)
        self.sequence, self.index, self.per_batch = sequence, index, per_batch
        self.kept = [(task, row) for task, rows in sequence.memory.items() for row in rows]
        self.chosen: list[tuple[int, int]] = []
        self.draws = 0

    def rows(self, device) -> dict:
        sequence = self.sequence
        seed = sequence.config.seed * 100_003 + self.index * 10_007 + self.draws
        self.draws += 1
        picks = torch.randint(len(self.kept), (self.per_batch,), generator=torch.Generator().manual_seed(seed))
        self.chosen = [self.kept[i] for i in picks.tolist()]
        rows = sequence.collate([sequence.tasks[task].datasets["train"][row] for task, row in self.chosen])
        return to_device(rows, device)

    def value(self, forward: ForwardPass) -> torch.Tensor:
        labels = forward.added[self.name]["labels"]
        if self.sequence.class_incremental:  # one head: the replayed rows' logits are in the output already
            return F.cross_entropy(forward.logits[forward.rows :].float(), labels)
        switch = self.sequence.switch
        features = switch.features[forward.rows :]
        losses = []
        for task in sorted({t for t, _ in self.chosen}):
            rows = [i for i, (t, _) in enumerate(self.chosen) if t == task]
            logits = switch.heads[self.sequence.key(task)](features[rows])
            losses.append(F.cross_entropy(logits.float(), labels[rows], reduction="sum"))
        return torch.stack(losses).sum() / len(self.chosen)

    def state_dict(self) -> dict:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state["draws"]


class EarlierHeads(LossTerm):
    """LwF: the earlier tasks' outputs on the new rows kept close to the model's before this task."""

    name = "lwf"

    def __init__(self, sequence, teacher: torch.nn.Module, old: list[int], strength: float, temperature: float):
        super().__init__(strength)
        self.sequence, self.teacher, self.old, self.temperature = sequence, teacher, old, temperature

    def value(self, forward: ForwardPass) -> torch.Tensor:
        sequence = self.sequence
        features = sequence.switch.features[: forward.rows]
        with torch.no_grad():
            teacher_out = output_logits(self.teacher(**model_inputs(forward.batch)))
            teacher_switch = switch_of(self.teacher)
        if sequence.class_incremental:
            tasks = sequence.tasks
            seen = sorted({tasks[t].labels.label2id[n] for t in self.old for n in tasks[t].raw.labels.names})
            student = sequence.switch.heads["all"](features)[:, seen]
            return distillation_loss(student, teacher_out[:, seen], self.temperature)
        terms = []
        for task in self.old:
            head = sequence.key(task)
            with torch.no_grad():
                target = teacher_switch.heads[head](teacher_switch.features)
            terms.append(distillation_loss(sequence.switch.heads[head](features), target, self.temperature))
        return torch.stack(terms).mean()


def switch_of(model) -> HeadSwitch:
    return next(module for module in model.modules() if isinstance(module, HeadSwitch))
