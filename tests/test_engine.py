"""The training engine: repeatability, accumulation, early stopping, best weights, precision,
optimizers and schedules, gradient checkpointing, dropout."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tunelab.builder import run_training
from tunelab.config import OptimConfig, ScheduleConfig, validate
from tunelab.engine.optim import build_optimizer, decay_groups
from tunelab.engine.schedules import build_scheduler, lr_multiplier
from tunelab.io import read_jsonl
from tunelab.rundir import METRICS, MODEL, prepare_run_dir


def patched(config: dict, **sections) -> dict:
    """A copy of ``config`` with each named section updated (``train={"max_steps": 2}``)."""
    return config | {name: config.get(name, {}) | values for name, values in sections.items()}


def train(config: dict, run_dir) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    results = run_training(validate(config), prepare_run_dir(run_dir, False), progress=False)
    return results, load_file(run_dir / MODEL / "model.safetensors"), read_jsonl(run_dir / METRICS)


def evaluations(records: list[dict]) -> list[dict]:
    return [record for record in records if record["type"] == "eval"]


def learning_rates(records: list[dict]) -> list[float]:
    return [record["lr"] for record in records if record["type"] == "train"]


# -- (a) repeatability --------------------------------------------------------------------------


def test_same_seed_gives_identical_runs(text_config, tmp_path):
    # Dropout stays on (0.1): its masks come from the seeded generator too.
    config = patched(text_config, train={"epochs": 1, "eval_every": 4})
    first, first_weights, first_log = train(config, tmp_path / "first")
    second, second_weights, second_log = train(config, tmp_path / "second")
    assert first["final"] == second["final"]
    assert first["base"] == second["base"]
    assert first_log == second_log
    assert first_weights.keys() == second_weights.keys()
    for name, value in first_weights.items():
        assert torch.equal(value, second_weights[name]), name


def test_building_the_cached_cnn_first_changes_nothing(tmp_path, monkeypatch):
    """The first use of ``digits-cnn`` builds it with a nested training run. That run used to
    reset this run's Accelerator (grad_accum_steps silently back to 1: every micro-batch became an
    optimizer step, so the epoch budget ran out after one epoch) and its seeded generators."""
    from tunelab.models import builtin

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "empty-cache"))
    # The built-in's quality is not the point here: pretrain it for one epoch, not fifteen.
    pretrain = builtin.PRETRAIN_CONFIG
    monkeypatch.setitem(pretrain, "train", pretrain["train"] | {"epochs": 1})
    monkeypatch.setitem(pretrain, "data", pretrain["data"] | {"digits_train_per_class": 8})
    config = {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": "digits-cnn"},
        "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_train_per_class": 16},
        "train": {"epochs": 2, "batch_size": 8, "grad_accum_steps": 2, "log_every": 1},
        "evaluate": {"base": False},
    }
    cold, cold_weights, cold_log = train(config, tmp_path / "cold")
    warm, warm_weights, warm_log = train(config, tmp_path / "warm")
    for results in (cold, warm):
        assert (results["steps"], results["epochs_completed"]) == (2 * 80 // 16, 2)
    assert cold["final"] == warm["final"] and cold_log == warm_log
    for name, value in warm_weights.items():
        assert torch.equal(cold_weights[name], value), name


# -- (b) gradient accumulation -------------------------------------------------------------------


def test_accumulating_two_batches_of_8_equals_one_batch_of_16(text_config, tmp_path):
    """The loss is a per-batch mean and Accelerate divides it by the accumulation count, so two
    equal micro-batches of 8 give the gradient of their batch of 16: (mean_a + mean_b) / 2. The
    sampler's order is the same, so each optimizer step sees the same 16 examples. What remains is
    rounding: a different summation order, and padding each 8 to its own longest text."""
    config = patched(
        text_config,
        model={"dropout": 0.0},
        optim={"lr": 1e-2},
        train={"batch_size": 8, "grad_accum_steps": 1, "load_best_at_end": False},
    )
    accumulated, weights_8x2, log_8x2 = train(patched(config, train={"grad_accum_steps": 2}), tmp_path / "a")
    single, weights_16, log_16 = train(patched(config, train={"batch_size": 16}), tmp_path / "b")

    assert accumulated["steps"] == single["steps"] == 2 * 64 // 16
    assert [r["step"] for r in log_8x2] == [r["step"] for r in log_16]
    for a, b in zip(log_8x2, log_16, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a.get("lr") == b.get("lr")
    initial = load_file(text_config["model"]["source"] + "/model.safetensors")
    moved = max((weights_16[f"bert.{n}"] - value).abs().max().item() for n, value in initial.items())
    assert moved > 1e-2  # the comparison is between trained weights
    for name, value in weights_16.items():
        # Key biases: exactly-zero gradient in exact arithmetic; AdamW magnifies their rounding noise.
        tolerance = 1e-4 if name.endswith("attention.self.key.bias") else 1e-5
        torch.testing.assert_close(weights_8x2[name], value, atol=tolerance, rtol=0, msg=name)


# -- (c) early stopping, (d) best weights -------------------------------------------------------


def test_early_stopping_ends_a_stalled_run(text_config, tmp_path):
    config = patched(
        text_config,
        optim={"lr": 1e-9},
        train={"epochs": 3, "eval_every": 2, "early_stopping": {"patience": 1, "min_delta": 0.01}},
    )
    results, _, records = train(config, tmp_path / "run")
    budget = 3 * 64 // 8
    assert results["stopped_early"] is True
    assert "early stopping" in results["stop_reason"]
    # First evaluation (step 2) sets the best; the second (step 4) gains nothing: stop there.
    assert results["steps"] == 4 < budget
    assert [r["step"] for r in evaluations(records)] == [2, 4]
    assert results["epochs_completed"] == 1


def test_best_weights_are_restored_at_the_end(text_config, tmp_path):
    # A constant, too-high learning rate makes validation loss bounce: its best is not its last.
    config = patched(
        text_config,
        model={"dropout": 0.0},
        optim={"lr": 0.1},
        schedule={"name": "constant"},
        train={"epochs": 2, "eval_every": 2, "metric": "loss", "load_best_at_end": True},
    )
    results, _, records = train(config, tmp_path / "run")
    losses = [r["loss"] for r in evaluations(records)]
    best = min(losses)
    assert losses[-1] > best + 1e-3, "the run's last evaluation should be worse than its best"
    assert results["best"]["value"] == pytest.approx(best, abs=1e-7)
    assert results["best"]["step"] < results["steps"]
    assert results["final"]["validation"]["loss"] == pytest.approx(best, abs=1e-6)


# -- (e) mixed precision -------------------------------------------------------------------------


def test_bf16_on_cpu_runs(text_config, tmp_path):
    config = patched(text_config, train={"max_steps": 4, "log_every": 1, "mixed_precision": "bf16"})
    results, weights, records = train(config, tmp_path / "run")
    assert results["mixed_precision"] == "bf16" and results["steps"] == 4
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(math.isfinite(results["final"][split]["loss"]) for split in ("train", "validation", "test"))
    assert all(value.dtype == torch.float32 for value in weights.values())  # autocast, weights stay fp32


# -- (f) optimizers and schedules ---------------------------------------------------------------

BASE_LR = 1e-2
SHORT = {"max_steps": 6, "log_every": 1}


@pytest.mark.parametrize(
    "optim",
    [{"name": "adamw"}, {"name": "adam"}, {"name": "rmsprop", "lr": 1e-3}, {"name": "sgd", "nesterov": True}],
    ids=lambda o: o["name"],
)
def test_each_optimizer_trains_with_one_cycle(optim, text_config, tmp_path):
    # One-cycle cycles momentum (SGD, RMSprop) or betas (Adam, AdamW) along with the rate.
    config = patched(
        text_config,
        optim={"lr": BASE_LR} | optim,
        schedule={"name": "one-cycle", "warmup_steps": 2},
        train=SHORT,
        evaluate={"base": False},
    )
    results, weights, records = train(config, tmp_path / "run")
    assert results["steps"] == 6
    assert all(math.isfinite(r["loss"]) for r in records)
    peak = config["optim"]["lr"]
    rates = learning_rates(records)
    assert max(rates) == pytest.approx(peak)
    assert rates[-1] < peak / 100  # annealed by the last optimizer step
    initial = load_file(text_config["model"]["source"] + "/model.safetensors")
    name = "encoder.layer.0.output.dense.weight"
    assert not torch.equal(weights[f"bert.{name}"], initial[name])


def test_an_unset_rate_follows_the_batch_strategy_and_optimizer(text_config):
    def rate(**sections) -> float:
        return validate(patched(text_config | {"optim": {}}, **sections)).learning_rate()

    assert rate(train={"batch_size": 8}) == pytest.approx(5e-5)  # Trainer's rate at its batch
    assert rate(train={"batch_size": 32}) == pytest.approx(1e-4)  # the square-root rule
    assert rate(train={"batch_size": 8, "grad_accum_steps": 4}) == pytest.approx(1e-4)  # the batch a step sees
    assert rate(train={"batch_size": 32}, strategy={"name": "lora"}) == pytest.approx(1e-3)
    assert rate(train={"batch_size": 32}, optim={"name": "sgd"}) == pytest.approx(1e-2)
    assert rate(train={"batch_size": 32}, optim={"lr": 3e-5}) == 3e-5  # a given rate is kept as given
    assert rate(optim={"lr": "auto"}) == "auto"


def test_a_run_without_a_rate_trains_at_the_default(text_config, tmp_path):
    config = patched(text_config | {"optim": {}}, train=SHORT | {"batch_size": 8}, evaluate={"base": False})
    results, _, records = train(config, tmp_path / "run")
    assert [group["lr"] for group in results["optimizer_groups"]] == pytest.approx([5e-5, 5e-5])  # decay, no decay
    assert max(learning_rates(records)) == pytest.approx(5e-5)


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "exponential", "one-cycle"])
def test_each_schedule_with_warmup_runs(name, text_config, tmp_path):
    schedule = {"name": name, "warmup_steps": 2, "min_lr_ratio": 0.1, "gamma": 0.5}
    config = patched(text_config, optim={"lr": BASE_LR}, schedule=schedule, train=SHORT, evaluate={"base": False})
    results, _, records = train(config, tmp_path / "run")
    rates = learning_rates(records)  # the rate each of the 6 optimizer steps used
    assert results["steps"] == len(rates) == 6
    if name == "one-cycle":
        assert max(rates) == pytest.approx(BASE_LR) and rates[-1] < BASE_LR / 100
        return
    factor = lr_multiplier(ScheduleConfig(**schedule), 6)
    assert rates == pytest.approx([BASE_LR * factor(step) for step in range(6)], abs=1e-12)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(BASE_LR)  # warmup rises to the base rate
    expected_last = {
        "constant": 1.0,
        "linear": 0.25,
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4)),
        "exponential": 0.5**3,
    }
    assert rates[-1] == pytest.approx(BASE_LR * expected_last[name], abs=1e-12)


# -- unit: schedules and decay groups -----------------------------------------------------------


def test_lr_multiplier_shapes():
    total = 20
    warm = lr_multiplier(ScheduleConfig(name="linear", warmup_steps=5), total)
    factors = [warm(step) for step in range(total + 1)]
    assert all(a < b for a, b in zip(factors[:6], factors[1:6], strict=False))  # rising through warmup
    assert factors[5] == 1.0 and factors[-1] == 0.0
    assert all(a >= b for a, b in zip(factors[5:], factors[6:], strict=False))  # then falling

    cosine = lr_multiplier(ScheduleConfig(name="cosine", min_lr_ratio=0.2), total)
    values = [cosine(step) for step in range(total + 5)]
    assert values[0] == 1.0 and values[total] == pytest.approx(0.2)
    assert min(values) >= 0.2 - 1e-12  # the floor holds, also past the end

    ratio = lr_multiplier(ScheduleConfig(name="constant", warmup_ratio=0.25), total)  # 5 warmup steps
    assert [ratio(step) for step in range(7)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.0])

    exponential = lr_multiplier(ScheduleConfig(name="exponential", gamma=0.9, warmup_steps=2), total)
    assert exponential(2) == 1.0 and exponential(12) == pytest.approx(0.9**10)


def test_build_scheduler_follows_the_multiplier():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [parameter], "lr": 0.5}], OptimConfig(name="sgd", lr=0.5))
    config = ScheduleConfig(name="cosine", warmup_steps=3, min_lr_ratio=0.1)
    scheduler, factor = build_scheduler(optimizer, config, 10), lr_multiplier(config, 10)
    for step in range(10):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * factor(step))
        optimizer.step()
        scheduler.step()


def test_decay_groups_spare_biases_and_norm_weights():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(8, 2))
    model[4].weight.requires_grad_(False)
    groups = {group["name"]: group for group in decay_groups(model, lr=1e-3, weight_decay=0.05)}
    ids = {name: {id(p) for p in group["params"]} for name, group in groups.items()}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert ids["decay"] == {id(model[0].weight), id(model[2].weight)}
    assert ids["no_decay"] == {
        id(p)
        for p in (
            model[0].bias,
            model[1].weight,
            model[1].bias,
            model[2].bias,
            model[3].weight,
            model[3].bias,
            model[4].bias,
        )
    }  # the frozen Linear weight is in neither
    assert all(group["lr"] == 1e-3 for group in groups.values())


def test_decay_groups_on_bert(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    groups = {group["name"]: group for group in decay_groups(model, lr=1e-3, weight_decay=0.01)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert "bert.embeddings.LayerNorm.weight" in no_decay and "classifier.bias" in no_decay
    assert all(n.endswith("weight") and "LayerNorm" not in n for n in decay)
    assert "bert.encoder.layer.0.intermediate.dense.weight" in decay and "classifier.weight" in decay
    assert len(decay) + len(no_decay) == len(names)


# -- (g) gradient checkpointing, (h) dropout -----------------------------------------------------


def test_gradient_checkpointing_runs_and_matches(text_config, tmp_path):
    config = patched(
        text_config, model={"dropout": 0.0}, train={"max_steps": 3, "load_best_at_end": False}, evaluate={"base": False}
    )
    checkpointed, weights, _ = train(patched(config, model={"gradient_checkpointing": True}), tmp_path / "ckpt")
    plain, plain_weights, _ = train(config, tmp_path / "plain")
    assert checkpointed["steps"] == 3
    # Recomputing activations in backward changes no arithmetic that matters: same weights.
    for name, value in plain_weights.items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)


def test_gradient_checkpointing_is_switched_on(text_config):
    from tunelab.data import read_data
    from tunelab.models import load_model

    config = validate(patched(text_config, model={"gradient_checkpointing": True}))
    loaded = load_model(config, read_data(config).labels)
    assert loaded.model.is_activation_checkpointing  # transformers 5's name for is_gradient_checkpointing


@pytest.mark.parametrize("source", ["bert", "cnn"])
def test_dropout_override_reaches_every_dropout(source, text_config):
    from tunelab.data import read_data
    from tunelab.models import load_model

    if source == "cnn":
        raw = {"task": "image-classification", "model": {"source": "cnn"}, "data": {"train": "digits"}}
    else:
        raw = text_config
    config = validate(patched(raw, model={"dropout": 0.25}))
    data = read_data(config)
    model = load_model(config, data.labels, data.channels).model
    dropouts = [module for module in model.modules() if isinstance(module, nn.Dropout)]
    assert dropouts and all(module.p == 0.25 for module in dropouts)
    if source == "bert":
        assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.25
