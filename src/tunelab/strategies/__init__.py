"""Strategies: one small module each, chosen by ``strategy.name``."""

from tunelab.config import StrategyConfig
from tunelab.strategies.base import Strategy
from tunelab.strategies.full import FullStrategy
from tunelab.strategies.partial import PartialStrategy

STRATEGIES: dict[str, type[Strategy]] = {"full": FullStrategy, "partial": PartialStrategy}


def build_strategy(config: StrategyConfig) -> Strategy:
    return STRATEGIES[config.name](config)


__all__ = ["STRATEGIES", "Strategy", "build_strategy"]
