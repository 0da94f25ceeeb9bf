"""The strategy interface: decide what trains, give the optimizer its parameter groups.

A strategy is also a callback, so one that changes over time (progressive unfreezing) reacts to
engine events, and its ``state_dict`` goes into checkpoints. A strategy also says what the rest
of tunelab needs to know of it (its rate factor, whether PEFT wraps the model, its own config
section), so adding one is one module and one ``register_strategy`` line; nothing else changes.

Discriminative learning rates live here, since they combine with any strategy that trains
whole blocks: ``layer_lr_decay`` multiplies the rate by a factor per block from the head down,
``head_lr`` sets the head's own rate, and ``lr_groups`` names rates by parameter pattern.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tunelab.config import OptimConfig, StrategyConfig
from tunelab.engine.callbacks import Callback
from tunelab.engine.optim import decay_groups
from tunelab.errors import UserError
from tunelab.strategies.anatomy import anatomy, name_matches


class Strategy(Callback):
    name = "base"
    default_layer_lr_decay: float | None = None
    # Relative to full fine-tuning's rate: the default rate, and compare's rate for it (tunelab.rates).
    rate_factor: float = 1.0
    # PEFT wraps the model: per-layer rates (which need its own layout) and weight-pulling
    # forgetting methods (EWC, L2-SP, on weights it leaves frozen) do not apply.
    peft: bool = False
    compared_by_default: bool = True  # in `tunelab compare` when no strategies are named
    # A plugin's own settings: validated with this model from ``strategy.<name>:`` in a config
    # (the built-ins' sections are typed fields of config.StrategyConfig).
    section: type | None = None

    @classmethod
    def compare_settings(cls, settings: dict) -> dict:
        """What ``compare`` adds to the config's strategy section for this strategy to run (a rule
        partial needs, say), given that section as a dict."""
        return {}

    def __init__(self, config: StrategyConfig, fresh: list[str] = ()):
        self.config = config
        self.fresh = list(fresh)  # parameters the base checkpoint lacked (a new head, a new pooler)

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze, unfreeze or inject; may return a wrapped model."""
        return model

    def optimised_names(self, model: nn.Module) -> set[str] | None:
        """Parameters the optimizer holds beyond those trainable now (None: just those)."""
        return None

    def parameter_groups(self, model: nn.Module, optim: OptimConfig) -> list[dict]:
        """Trainable parameters split by learning rate and into weight-decay and no-decay groups."""
        return decay_groups(
            model,
            optim.lr,
            optim.weight_decay,
            rates=self.learning_rates(model, optim.lr),
            include=self.optimised_names(model),
        )

    def learning_rates(self, model: nn.Module, base_lr: float) -> dict[str, float]:
        """Per-parameter rates where they differ from ``base_lr``; empty without discriminative options."""
        config = self.config
        decay = config.layer_lr_decay or self.default_layer_lr_decay
        if decay is None and config.head_lr is None and not config.lr_groups:
            return {}
        names = [name for name, _ in model.named_parameters()]
        parts = anatomy(model)
        depths = parts.depths(names) if decay is not None else {}
        rates = {name: base_lr * decay ** depths[name] for name in depths}
        if config.head_lr is not None:
            rates |= {name: config.head_lr for name in names if parts.in_head(name)}
        unused = set(config.lr_groups)
        for name in names:
            pattern = next((p for p in config.lr_groups if name_matches(name, p)), None)
            if pattern is not None:
                rates[name] = config.lr_groups[pattern]
                unused.discard(pattern)
        if unused:
            raise UserError(f"strategy.lr_groups: pattern '{sorted(unused)[0]}' matches no parameter")
        return rates

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

    def describe(self, model: nn.Module) -> dict:
        """Strategy facts for results.json (what it trains, how)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
