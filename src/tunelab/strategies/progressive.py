"""Progressive (gradual) unfreezing: the head first, then one more block from the top at a time.

Stage 0 trains the head and what follows the last block (pooler, final norm), plus
``start_blocks`` top blocks. Every ``every`` epochs or steps the next stage unfreezes one more
block, down to ``max_blocks``; once every block trains, the embeddings follow if
``include_embeddings``. With ``groups`` the stages after the first are the given patterns.

Two failures other tools have here are designed out:

- *Resume*: the optimizer holds every parameter that will ever train from the first step (a
  frozen one has no gradient, so the optimizer skips it: no moments, no weight decay), so its
  groups never change and a checkpoint always fits. The stage is a function of the step or
  epoch, set again when training starts, so a resumed run is at the same stage as the run it
  continues and the checkpoint needs no state of the strategy's own.
- *DDP*: DistributedDataParallel only synchronises parameters that required gradients when it
  was built. Under several processes every parameter that will train requires gradients from
  the start, and the gradients of the not-yet-unfrozen ones are dropped before each optimizer
  step, identically on every process. One process freezes for real and saves the backward work.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy, name_matches
from tunelab.strategies.base import Strategy

NEVER = 10**9


class ProgressiveStrategy(Strategy):
    name = "progressive"

    def __init__(self, config, fresh: list[str] = ()):
        super().__init__(config, fresh)
        self.stage_of: dict[str, int] = {}
        self.stage = 0
        self.parameters: dict[str, nn.Parameter] = {}
        self.distributed = False

    @property
    def last_stage(self) -> int:
        return max(stage for stage in self.stage_of.values() if stage < NEVER)

    def apply(self, model: nn.Module) -> nn.Module:
        self.parameters = dict(model.named_parameters())
        names = list(self.parameters)
        self.stage_of = self._stages(model, names)
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self._set_stage(0)
        return model

    def optimised_names(self, model: nn.Module) -> set[str]:
        return {name for name, stage in self.stage_of.items() if stage < NEVER}

    def _stages(self, model: nn.Module, names: list[str]) -> dict[str, int]:
        progressive = self.config.progressive
        parts = anatomy(model)
        depths = parts.depths(names)
        if progressive.groups:
            stages = {name: 0 if depths[name] == 0 else NEVER for name in names}
            for index, patterns in enumerate(progressive.groups, start=1):
                for pattern in patterns:
                    matched = [name for name in names if name_matches(name, pattern)]
                    if not matched:
                        raise UserError(f"strategy.progressive.groups: pattern '{pattern}' matches no parameter")
                    for name in matched:
                        stages[name] = min(stages[name], index)
            return stages
        count = len(parts.blocks)
        if count == 0:
            raise UserError("strategy progressive: this model has no repeated blocks (no nn.ModuleList); use groups")
        start, limit = progressive.start_blocks, progressive.max_blocks
        if start > count or (limit is not None and limit > count):
            raise UserError(f"strategy.progressive: the model has {count} blocks")
        limit = count if limit is None else limit
        stages = {}
        for name in names:
            depth = depths[name]
            if depth == 0:
                stages[name] = 0
            elif depth <= count:  # block depth: 1 for the top block
                stages[name] = max(0, depth - start) if depth <= max(limit, start) else NEVER
            else:  # embeddings and whatever precedes the blocks
                stages[name] = count - start + 1 if progressive.include_embeddings and limit == count else NEVER
        return stages

    def _set_stage(self, stage: int) -> None:
        self.stage = min(stage, self.last_stage)
        for name, parameter in self.parameters.items():
            trains = self.stage_of[name] <= self.stage
            parameter.requires_grad_(trains or (self.distributed and self.stage_of[name] < NEVER))

    def _stage_at(self, state) -> int:
        progressive = self.config.progressive
        elapsed = state.epoch if progressive.unit == "epoch" else state.step
        return elapsed // progressive.every

    def on_train_start(self, state, model, optimizer) -> None:
        self._set_stage(self._stage_at(state))

    def on_epoch_start(self, state, model, optimizer) -> None:
        if self.config.progressive.unit == "epoch":
            self._set_stage(self._stage_at(state))

    def on_step_end(self, state) -> None:
        if self.config.progressive.unit == "step" and state.step < state.total_steps:
            self._set_stage(self._stage_at(state))

    def on_before_optimizer_step(self, state, model) -> None:
        if self.distributed:
            for name, parameter in self.parameters.items():
                if self.stage_of[name] > self.stage:
                    parameter.grad = None

    def describe(self, model: nn.Module) -> dict:
        counts: dict[int, int] = {}
        for name, stage in self.stage_of.items():
            counts[stage] = counts.get(stage, 0) + self.parameters[name].numel()
        reached = sum(count for stage, count in counts.items() if stage <= self.stage)
        return {
            "stage": self.stage,
            "stages": self.last_stage + 1,
            "trainable_by_stage": [
                sum(counts.get(s, 0) for s in range(stage + 1)) for stage in range(self.last_stage + 1)
            ],
            "trainable_at_end": reached,
        }
