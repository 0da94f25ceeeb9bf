"""Find the repeated blocks and the head of a model, whatever its architecture.

Blocks are the longest ``nn.ModuleList`` in the model (BERT's ``encoder.layer``, GPT-2's ``h``,
ViT's ``encoder.layer``, the demo CNN's ``blocks``). The head is what a Hugging Face model keeps
outside its base model (``classifier``), or the last top-level child with parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn


@dataclass
class Anatomy:
    blocks: list[str]  # module names, input side first
    head: list[str]  # module names

    def block_of(self, parameter_name: str) -> int | None:
        for index, block in enumerate(self.blocks):
            if parameter_name.startswith(block + "."):
                return index
        return None

    def in_head(self, parameter_name: str) -> bool:
        return any(parameter_name.startswith(head + ".") for head in self.head)

    def depths(self, names: list[str]) -> dict[str, int]:
        """Distance of each parameter from the output: 0 for the head and what follows the last
        block (pooler, final norm), ``n - i`` for block ``i`` of ``n``, ``n + 1`` for what
        precedes the blocks (embeddings, stem). Parameter order tells before from after."""
        count = len(self.blocks)
        block_positions = [i for i, name in enumerate(names) if self.block_of(name) is not None]
        first_block = block_positions[0] if block_positions else len(names)
        depths = {}
        for position, name in enumerate(names):
            block = self.block_of(name)
            if self.in_head(name):
                depths[name] = 0
            elif block is not None:
                depths[name] = count - block
            else:
                depths[name] = count + 1 if position < first_block else 0
        return depths


def anatomy(model: nn.Module) -> Anatomy:
    return Anatomy(blocks=_blocks(model), head=_head(model))


def _blocks(model: nn.Module) -> list[str]:
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        return []
    name, longest = max(lists, key=lambda item: len(item[1]))
    return [f"{name}.{index}" for index in range(len(longest))]


def _head(model: nn.Module) -> list[str]:
    prefix = getattr(model, "base_model_prefix", None)
    children = [(name, child) for name, child in model.named_children() if any(True for _ in child.parameters())]
    if prefix and any(name == prefix for name, _ in children):
        return [name for name, _ in children if name != prefix]
    for preferred in ("head", "classifier", "fc", "lm_head"):
        if any(name == preferred for name, _ in children):
            return [preferred]
    return [children[-1][0]] if children else []


def name_matches(name: str, pattern: str) -> bool:
    """A glob on a parameter's name or on the module that holds it (``bert.embeddings*``)."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")
