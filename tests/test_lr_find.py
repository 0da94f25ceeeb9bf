"""The learning-rate range test: a rate where runs converge, per strategy, and `optim.lr: auto`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tunelab.cli import main
from tunelab.search.lr_range import read_curve

DIGITS = {
    "task": "image-classification",
    "seed": 0,
    "model": {"source": "digits-cnn"},
    "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_train_per_class": 20},
    "optim": {"name": "adamw", "lr": 1e-3},
    "train": {"epochs": 3, "batch_size": 10, "checkpoint_every": None},
    "evaluate": {"base": True},
}


def write(tmp_path, config: dict, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def lr_find(tmp_path, config: dict, capsys, name: str = "find") -> dict:
    assert main(["lr-find", str(write(tmp_path, config, name)), "-o", str(tmp_path / name), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def train_at(tmp_path, config: dict, lr, name: str, capsys) -> dict:
    changed = config | {"optim": config["optim"] | {"lr": lr}}
    assert main(["train", str(write(tmp_path, changed, name)), "-o", str(tmp_path / name), "--json"]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / name / "results.json").read_text())


RATES = [10 ** (-7 + i * 0.08) for i in range(100)]  # 1e-7 .. ~8, as the default range test


def falling_curve(noise: float, seed: int = 0) -> list[float]:
    """Flat at 2.0, falling between about 1e-4 and 1e-2 to 0.5, then rising; batch noise on top."""
    rng = np.random.default_rng(seed)
    clean = [0.5 + 1.5 / (1 + (r / 1e-3) ** 1.5) + (r / 1e-1) ** 2 for r in RATES]
    return list(np.array(clean) + rng.normal(0, noise, len(RATES)))


def test_the_suggestion_is_the_middle_of_the_descent_of_a_known_curve():
    found = read_curve(RATES, falling_curve(noise=0.05))
    begin, end = found["descent"]
    lowest = RATES[int(np.argmin(falling_curve(noise=0.0)))]
    assert 3e-5 < begin < 3e-4 and lowest / 2 < end < lowest * 2  # from leaving the plateau to the minimum
    assert found["suggested"] == pytest.approx((begin * end) ** 0.5)
    assert 3e-4 < found["steepest"] < 3e-3
    assert len(found["smoothed"]) == len(RATES)


@pytest.mark.parametrize("seed", range(5))
def test_a_dip_at_the_start_is_not_read_as_the_descent(seed):
    """A batch or two of low loss among the first steps (the 3.7e-7 once suggested for the digits
    config came from one) moves neither the descent nor the suggestion."""
    losses = falling_curve(noise=0.2, seed=seed)
    losses[6:8] = [1.0, 1.0]  # half the plateau's 2.0: the earlier reading suggested 3.0e-7 here
    found = read_curve(RATES, losses)
    assert 1e-4 < found["suggested"] < 1e-2 and found["descent"][0] > 1e-5


def test_noise_without_a_descent_is_refused():
    rng = np.random.default_rng(0)
    noisy = list(2.0 + rng.normal(0, 0.3, len(RATES)))  # single batches swing by 15%, the curve stays flat
    with pytest.raises(ValueError, match="within the noise of single batches|never fell 5%"):
        read_curve(RATES, noisy)


def test_digits_a_run_at_the_suggestion_learns_and_one_at_100x_does_worse(tmp_path, capsys):
    found = lr_find(tmp_path, DIGITS, capsys)
    assert 1e-5 < found["suggested"] < 1e-1 and len(found["rates"]) == len(found["smoothed"])
    assert (tmp_path / "find" / "lr_find.html").read_text().count("<img") == 1
    good = train_at(tmp_path, DIGITS, found["suggested"], "good", capsys)
    bad = train_at(tmp_path, DIGITS, 100 * found["suggested"], "bad", capsys)
    assert good["final"]["validation"]["loss"] < good["base"]["validation"]["loss"]
    assert bad["diverged"] or bad["final"]["validation"]["loss"] > good["final"]["validation"]["loss"]


def test_tiny_bert_a_run_at_the_suggestion_learns_and_one_at_100x_does_worse(tmp_path, capsys, text_config):
    # 30 epochs (240 steps): the tiny BERT sits on the 0.693 plateau for a while, and after 10 epochs
    # two seeds in six had barely left it (accuracy 0.69, loss 0.692 against 100x's 0.693). After
    # 30, seeds 0-5 on this CPU and with another CPU's kernels (ATEN_CPU_CAPABILITY=default): accuracy
    # 1.0, loss 0.21-0.54 (base 0.693) against 100x's 0.72-9.1.
    text_config["train"] |= {"epochs": 30, "checkpoint_every": None}
    # 300 steps: at the default 100 (12 a decade) the loss of this toy task had not yet fallen when it
    # diverged, for two seeds in five; at 300 it fell for all five.
    text_config["optim"] |= {"lr_find_steps": 300}
    found = lr_find(tmp_path, text_config, capsys)
    good = train_at(tmp_path, text_config, found["suggested"], "good", capsys)
    bad = train_at(tmp_path, text_config, min(10.0, 100 * found["suggested"]), "bad", capsys)
    assert good["final"]["validation"]["loss"] < good["base"]["validation"]["loss"] - 0.1
    assert good["final"]["validation"]["accuracy"] > 0.8
    assert bad["diverged"] or bad["final"]["validation"]["loss"] > good["final"]["validation"]["loss"]


def test_lora_and_full_fine_tuning_get_their_own_rates(tmp_path, capsys):
    full = lr_find(tmp_path, DIGITS, capsys, "full")
    lora = lr_find(tmp_path, DIGITS | {"strategy": {"name": "lora"}}, capsys, "lora")
    assert lora["trainable_parameters"] < full["trainable_parameters"] / 2
    # The range test ran on the LoRA model, not the full one: same seed and data, another curve.
    assert lora["losses"] != full["losses"]
    # LoRA's suggestion is larger as a rule but not always: lora/full was 1.0-2.4 over seeds 0-5
    # with another CPU's kernels (ATEN_CPU_CAPABILITY=default), so the ratio is not asserted.
    lora_run = train_at(tmp_path, DIGITS | {"strategy": {"name": "lora"}}, lora["suggested"], "lora-run", capsys)
    assert lora_run["final"]["validation"]["loss"] < lora_run["base"]["validation"]["loss"]


def test_a_flat_curve_is_refused_rather_than_read(tmp_path, capsys, text_config):
    flat = text_config | {"optim": text_config["optim"] | {"lr_find_end": 1e-5}}  # too small to move anything
    assert main(["lr-find", str(write(tmp_path, flat, "flat")), "-o", str(tmp_path / "flat")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lr-find: the loss never fell 5% below its start" in err and len(err.splitlines()) == 1


def test_lr_auto_trains_exactly_like_the_suggested_rate_given_by_hand(tmp_path, capsys):
    auto = train_at(tmp_path, DIGITS, "auto", "auto", capsys)
    found = auto["lr_found"]
    assert found["suggested"] > 0 and "rates" not in found  # the curve stays in lr-find's own report
    assert auto["optimizer_groups"][0]["lr"] == pytest.approx(found["suggested"])
    by_hand = train_at(tmp_path, DIGITS, found["suggested"], "by-hand", capsys)
    # The range test leaves weights, optimizer and random state as they were: the same run follows.
    model = "model/model.safetensors"
    assert (tmp_path / "auto" / model).read_bytes() == (tmp_path / "by-hand" / model).read_bytes()
    assert auto["final"] == by_hand["final"]


def test_an_auto_rate_is_found_again_for_each_strategy_in_compare(tmp_path):
    from tunelab.config import validate
    from tunelab.recipes.compare import strategy_config

    config = validate({"data": {"train": "x.csv"}, "optim": {"lr": "auto"}, "compare": {"lr": {"lora": 1e-3}}})
    assert strategy_config(config, "full").optim.lr == "auto"
    assert strategy_config(config, "lora").optim.lr == 1e-3  # a rate named in compare.lr still wins


def test_gradient_accumulation_does_not_shrink_the_range_tests_steps(tmp_path, capsys):
    """The range test steps on every batch, so the run's accumulation must not divide its loss:
    with SGD (whose step scales with the gradient) the curve is the same with and without it."""
    sgd = DIGITS | {"optim": {"name": "sgd", "lr": 1e-3, "lr_find_steps": 30}}
    single = lr_find(tmp_path, sgd, capsys, "single")
    accumulating = sgd | {"train": DIGITS["train"] | {"grad_accum_steps": 4}}
    assert lr_find(tmp_path, accumulating, capsys, "accumulating")["losses"] == single["losses"]
