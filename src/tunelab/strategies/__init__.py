"""Strategies: one small module each, chosen by ``strategy.name``, registered here by name.

Everything else asks the registry (``strategy_class``) for what it needs to know of a strategy;
a plugin adds its own with ``register_strategy`` and touches no file of tunelab's.
"""

from tunelab.errors import UserError
from tunelab.strategies.adapter import AdapterStrategy
from tunelab.strategies.base import Strategy
from tunelab.strategies.bitfit import BitFitStrategy
from tunelab.strategies.discriminative import DiscriminativeStrategy
from tunelab.strategies.full import FullStrategy
from tunelab.strategies.partial import PartialStrategy
from tunelab.strategies.peft_methods import Ia3Strategy, LoraStrategy, PrefixStrategy, PromptStrategy
from tunelab.strategies.progressive import ProgressiveStrategy

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(strategy: type[Strategy]) -> type[Strategy]:
    """Make ``strategy`` available as ``strategy.name: <its name>`` (usable as a class decorator)."""
    if not strategy.name or strategy.name == Strategy.name:
        raise ValueError(f"{strategy.__name__} needs a name of its own")
    STRATEGIES[strategy.name] = strategy
    return strategy


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise UserError(f"strategy.name: '{name}' is not a strategy; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def build_strategy(config, fresh: list[str] = ()) -> Strategy:
    """The strategy ``config.name`` names; ``fresh`` lists weights the base checkpoint lacked."""
    return strategy_class(config.name)(config, fresh)


for _strategy in (
    FullStrategy,
    PartialStrategy,
    ProgressiveStrategy,
    DiscriminativeStrategy,
    BitFitStrategy,
    LoraStrategy,
    AdapterStrategy,
    PrefixStrategy,
    PromptStrategy,
    Ia3Strategy,
):
    register_strategy(_strategy)

__all__ = ["STRATEGIES", "Strategy", "build_strategy", "register_strategy", "strategy_class"]
