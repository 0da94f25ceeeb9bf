"""BitFit: train only the bias terms, plus the head (Ben Zaken et al., 2022).

A fraction of a percent of the parameters, with no new modules: the saved model is the full
model, and loads anywhere the base model does.
"""

from torch import nn

from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy
from tunelab.strategies.base import Strategy


class BitFitStrategy(Strategy):
    name = "bitfit"
    rate_factor = 10.0

    def apply(self, model: nn.Module) -> nn.Module:
        parts = anatomy(model)
        fresh = set(self.fresh)
        biases = 0
        for name, parameter in model.named_parameters():
            is_bias = name.endswith(".bias") or name == "bias"
            biases += is_bias
            parameter.requires_grad_(is_bias or parts.in_head(name) or name in fresh)
        if biases == 0:
            raise UserError("strategy bitfit: this model has no bias parameters")
        return model
