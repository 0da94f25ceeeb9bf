"""The search space: dotted config keys with ranges or choices, drawn by an Optuna trial and
applied to the run config; a default space when the config names none."""

from __future__ import annotations

import copy

from tunelab.config import RunConfig, SearchRange, set_key, validate
from tunelab.errors import UserError
from tunelab.rates import HIGHEST_RATE


def default_space(config: RunConfig) -> dict[str, SearchRange]:
    """Around the config's own values: the rate a decade either side (or 1e-5..1e-2 for auto),
    weight decay 0..0.1, warmup 0..20% of the steps, half to twice the epochs."""
    lr = config.learning_rate()
    low, high = (1e-5, 1e-2) if lr == "auto" else (lr / 10, min(HIGHEST_RATE, lr * 10))
    epochs = config.train.epochs
    space = {
        "optim.lr": SearchRange(low=low, high=high, log=True),
        "optim.weight_decay": SearchRange(low=0.0, high=0.1),
        "schedule.warmup_ratio": SearchRange(low=0.0, high=0.2),
    }
    if epochs > 1 or config.train.max_steps is None:
        space["train.epochs"] = SearchRange(low=max(1, epochs // 2), high=max(2, 2 * epochs), integer=True)
    return space


def draw(trial, space: dict[str, SearchRange]) -> dict:
    """One value per key, from the trial's sampler."""
    values = {}
    for key, found in space.items():
        if found.choices is not None:
            values[key] = trial.suggest_categorical(key, found.choices)
        elif found.integer:
            values[key] = trial.suggest_int(key, int(found.low), int(found.high), log=found.log)
        else:
            values[key] = trial.suggest_float(key, found.low, found.high, log=found.log)
    return values


def applied(config: RunConfig, values: dict, where: str) -> RunConfig:
    """The config with ``values`` at their dotted keys, validated (a bad key or value is named)."""
    raw = copy.deepcopy(config.model_dump(mode="json", exclude={"output_dir"}))
    for key, value in values.items():
        set_key(raw, key, value, where=f"{where} {key}")
    return validate(raw, source=where)


def current_values(config: RunConfig, space: dict[str, SearchRange]) -> dict | None:
    """The config's own value for each key, if every one lies in the space (to enqueue it as the
    study's first trial, so the table shows whether tuning beat it)."""
    raw = config.model_dump(mode="json")
    raw["optim"]["lr"] = config.learning_rate()  # the rate it trains at, when optim.lr is unset
    values = {}
    for key, found in space.items():
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        inside = node in found.choices if found.choices is not None else (
            isinstance(node, int | float) and not isinstance(node, bool) and found.low <= node <= found.high
        )  # fmt: skip
        if not inside:
            return None
        values[key] = node
    return values


def check_space(config: RunConfig, space: dict[str, SearchRange]) -> None:
    """Every key exists and takes the range's ends (or every choice), beside the other keys' first
    values (a trial sets them all at once): fail before any trial runs."""
    firsts = {key: _candidates(found)[0] for key, found in space.items()}
    for key, found in space.items():
        for value in _candidates(found):
            try:
                applied(config, firsts | {key: value}, "tune.space")
            except UserError as error:
                raise UserError(f"tune.space.{key}: {value!r} does not make a valid run ({error})") from None


def _candidates(found: SearchRange) -> list:
    if found.choices is not None:
        return list(found.choices)
    return [int(found.low), int(found.high)] if found.integer else [found.low, found.high]
