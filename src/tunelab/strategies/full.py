"""Full fine-tuning: every parameter trains."""

from torch import nn

from tunelab.strategies.base import Strategy


class FullStrategy(Strategy):
    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
