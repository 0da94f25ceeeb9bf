"""The strategy interface: decide what trains, give the optimizer its parameter groups.

A strategy is also a callback, so one that changes over time (progressive unfreezing) reacts to
engine events, and its ``state_dict`` goes into checkpoints. Adding a strategy means adding one
module and one line in ``strategies/__init__.py``; the loop never changes.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tunelab.config import OptimConfig, StrategyConfig
from tunelab.engine.callbacks import Callback
from tunelab.engine.optim import decay_groups


class Strategy(Callback):
    name = "base"

    def __init__(self, config: StrategyConfig):
        self.config = config

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze, unfreeze or inject; may return a wrapped model."""
        return model

    def parameter_groups(self, model: nn.Module, optim: OptimConfig) -> list[dict]:
        """Trainable parameters split into weight-decay and no-decay groups."""
        return decay_groups(model, optim.lr, optim.weight_decay)

    def train_mode(self, model: nn.Module) -> None:
        """Switch to training mode; batch-norm layers keep their pretrained statistics if asked.

        Small fine-tuning batches give noisy batch statistics that would overwrite the running
        statistics learned in pretraining, so ``freeze_norm_stats`` keeps them in inference mode.
        """
        model.train()
        if self.config.freeze_norm_stats:
            for module in model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
