"""Partial fine-tuning: freeze by module-name patterns, or train only the last N blocks + head.

With ``train_last_n_blocks``, everything before the first trained block (embeddings, earlier
blocks) is frozen; the last N blocks, what follows them (pooler, final norm) and the head train.
"""

from __future__ import annotations

from torch import nn

from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy, name_matches
from tunelab.strategies.base import Strategy


class PartialStrategy(Strategy):
    name = "partial"

    @classmethod
    def compare_settings(cls, settings: dict) -> dict:
        """Compared without a rule of its own, partial trains the last two blocks and the head."""
        return (
            {}
            if settings.get("freeze") or settings.get("train_last_n_blocks") is not None
            else {"train_last_n_blocks": 2}
        )

    def apply(self, model: nn.Module) -> nn.Module:
        names = [name for name, _ in model.named_parameters()]
        frozen = set()
        if self.config.freeze:
            frozen |= self._matching(names)
        if self.config.train_last_n_blocks is not None:
            frozen |= self._before_last_blocks(model, names, self.config.train_last_n_blocks)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in frozen)
        if len(frozen) == len(names):
            raise UserError("strategy: every parameter would be frozen; nothing left to train")
        return model

    def _matching(self, names: list[str]) -> set[str]:
        matched = set()
        for pattern in self.config.freeze:
            hits = {name for name in names if name_matches(name, pattern)}
            if not hits:
                examples = ", ".join(sorted({n.rsplit(".", 2)[0] for n in names})[:6])
                raise UserError(
                    f"strategy.freeze: pattern '{pattern}' matches no parameter; names look like: {examples}"
                )
            matched |= hits
        return matched

    def _before_last_blocks(self, model: nn.Module, names: list[str], count: int) -> set[str]:
        parts = anatomy(model)
        if not parts.blocks:
            raise UserError("strategy.train_last_n_blocks: this model has no repeated blocks (no nn.ModuleList)")
        if count > len(parts.blocks):
            raise UserError(
                f"strategy.train_last_n_blocks: {count} is more than the model's {len(parts.blocks)} blocks"
            )
        boundary = _first_trained_position(names, parts.blocks, len(parts.blocks) - count)
        return {name for position, name in enumerate(names) if position < boundary and not parts.in_head(name)}


def _first_trained_position(names: list[str], blocks: list[str], first_trained: int) -> int:
    """Index in parameter order where training starts: the first trained block, or after the last block."""
    if first_trained >= len(blocks):
        last = blocks[-1] + "."
        return max(i for i, n in enumerate(names) if n.startswith(last)) + 1
    first = blocks[first_trained] + "."
    return next(i for i, n in enumerate(names) if n.startswith(first))
