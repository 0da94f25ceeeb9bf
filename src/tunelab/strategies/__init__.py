"""Strategies: one small module each, chosen by ``strategy.name``."""

from tunelab.config import StrategyConfig
from tunelab.strategies.adapter import AdapterStrategy
from tunelab.strategies.base import Strategy
from tunelab.strategies.bitfit import BitFitStrategy
from tunelab.strategies.discriminative import DiscriminativeStrategy
from tunelab.strategies.full import FullStrategy
from tunelab.strategies.partial import PartialStrategy
from tunelab.strategies.peft_methods import Ia3Strategy, LoraStrategy, PrefixStrategy, PromptStrategy
from tunelab.strategies.progressive import ProgressiveStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    strategy.name: strategy
    for strategy in (
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
    )
}


def build_strategy(config: StrategyConfig, fresh: list[str] = ()) -> Strategy:
    """The strategy ``config.name`` names; ``fresh`` lists weights the base checkpoint lacked."""
    return STRATEGIES[config.name](config, fresh)


__all__ = ["STRATEGIES", "Strategy", "build_strategy"]
