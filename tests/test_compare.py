"""`tunelab compare`: every strategy in its own process, one table, comparison.json and a report;
a strategy that fails is reported in its row and the others still run."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main
from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.rates import rate_factor
from tunelab.recipes.compare import parse_strategies, strategy_config


def test_compare_runs_each_strategy_and_reports_a_failure_in_its_row(text_config, write_config, tmp_path, capsys):
    config = text_config | {
        "train": text_config["train"] | {"epochs": 1},
        "compare": {"lr": {"lora": 0.02}, "options": {"partial": {"train_last_n_blocks": 5}}},
    }
    output = tmp_path / "compared"
    code = main(["compare", str(write_config(config)), "--strategies", "full,lora,partial", "-o", str(output)])
    assert code == 0
    out = capsys.readouterr().out
    assert "strategies compared" in out and "partial: " in out

    summary = json.loads((output / "comparison.json").read_text())
    rows = {row["strategy"]: row for row in summary["rows"]}
    assert list(rows) == ["full", "lora", "partial"]
    full, lora, partial = rows["full"], rows["lora"], rows["partial"]
    assert "error" not in full and "error" not in lora
    assert "5 is more than the model's 2 blocks" in partial["error"] and "validation" not in partial
    assert lora["lr"] == 0.02 and full["lr"] == text_config["optim"]["lr"]
    assert lora["trainable_percent"] < 5 < full["trainable_percent"] == 100
    assert lora["checkpoint_mb"] < full["checkpoint_mb"]
    for row in (full, lora):
        assert 0 <= row["validation"]["accuracy"] <= 1 and row["test"]["accuracy"] is not None
        assert row["train_seconds"] > 0 and row["peak_memory_mb"] > 0 and row["steps"] == 8
        assert (output / row["strategy"] / "results.json").exists()
    page = (output / "report.html").read_text()
    assert page.count("<img") == 3 and "5 is more than the model" in page
    assert (output / "configs" / "lora.yaml").exists()

    # The comparison directory is a run directory: never replaced without --overwrite.
    again = main(["compare", str(write_config(config)), "--strategies", "full", "-o", str(output)])
    assert again == 2 and "already exists" in capsys.readouterr().err


def test_each_strategy_gets_its_own_rate_and_options(text_config):
    config = validate(text_config | {"compare": {"lr": {"bitfit": 0.5}, "options": {"lora": {"lora": {"r": 3}}}}})
    given = text_config["optim"]["lr"]
    assert strategy_config(config, "lora").optim.lr == pytest.approx(given * rate_factor("lora"))
    assert strategy_config(config, "lora").strategy.lora.r == 3
    assert strategy_config(config, "bitfit").optim.lr == 0.5
    assert strategy_config(config, "partial").strategy.train_last_n_blocks == 2  # partial needs a rule; a default
    assert strategy_config(config, "full").strategy.name == "full"
    # With no rate given, each run gets its own strategy's default, and the table shows it.
    unset = validate(text_config | {"optim": {}})
    for name in ("full", "lora", "ia3"):
        run = strategy_config(unset, name)
        assert run.optim.lr is None and run.learning_rate() == pytest.approx(unset.learning_rate() * rate_factor(name))


def test_bad_strategy_lists_are_one_line(text_config):
    config = validate(text_config)
    with pytest.raises(UserError, match="--strategies: 'lorra' is not a strategy; choose from full, partial"):
        parse_strategies("full,lorra", config)
    with pytest.raises(UserError, match="named twice"):
        parse_strategies("full,full", config)
    with pytest.raises(UserError, match="compare.lr: 'magic' is not a strategy"):
        validate(text_config | {"compare": {"lr": {"magic": 0.1}}})
    bad_option = validate(text_config | {"compare": {"options": {"lora": {"rank": 3}}}})
    with pytest.raises(UserError, match=r"compare \(lora\): unknown key 'strategy.rank'"):
        strategy_config(bad_option, "lora")
