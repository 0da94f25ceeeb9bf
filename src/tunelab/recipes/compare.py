"""`tunelab compare`: every strategy on the same data, seed and step budget, side by side.

Each strategy runs as its own ``tunelab train`` process, so its peak memory is its own (a
process's peak resident memory never goes down, so runs in one process would inherit the peak
of the one before) and a strategy that crashes cannot take the others with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from tunelab.config import (
    FORGETTING_SECTIONS,
    PER_LAYER_RATES_UNSET,
    RunConfig,
    comma_list,
    dump_config,
    run_parts,
    validate,
    wraps_with_peft,
)
from tunelab.errors import UserError
from tunelab.io import write_atomic, write_json
from tunelab.rates import HIGHEST_RATE, rate_factor
from tunelab.report.compare import rate_text
from tunelab.report.terminal import retain_metric
from tunelab.rundir import REPORT
from tunelab.strategies import STRATEGIES, strategy_class
from tunelab.tasks import scalar_metrics

COMPARISON = "comparison.json"


def parse_strategies(text: str | None, config: RunConfig) -> list[str]:
    names = comma_list(text, "--strategies") if text is not None else list(config.compare.strategies or [])
    names = names or [name for name, strategy in STRATEGIES.items() if strategy.compared_by_default]
    for name in names:
        try:
            run_parts(name)
        except ValueError as error:
            raise UserError(f"--strategies: {error}") from None
    if len(set(names)) != len(names):
        raise UserError("--strategies: a strategy is named twice")
    return names


def strategy_config(config: RunConfig, name: str) -> RunConfig:
    """The run config for one strategy (``lora``) or strategy with forgetting methods (``full+ewc``):
    its name, its learning rate, its own options, exactly the methods named."""
    strategy_name, methods = run_parts(name)
    raw = config.model_dump(mode="json", exclude={"output_dir"})
    strategy = raw["strategy"] | {"name": strategy_name}
    strategy |= strategy_class(strategy_name).compare_settings(strategy)
    if wraps_with_peft(strategy_name):
        strategy |= PER_LAYER_RATES_UNSET
    options = config.compare.options
    raw["strategy"] = _merged(strategy, options.get(name, options.get(strategy_name, {})))
    rates = config.compare.lr
    raw["optim"]["lr"] = rates.get(name, rates.get(strategy_name, _strategy_rate(config.optim.lr, strategy_name)))
    settings = config.compare.forgetting
    raw["forgetting"] = {"drift": config.forgetting.drift} | {
        method: (getattr(settings, method) or FORGETTING_SECTIONS[method]()).model_dump() for method in methods
    }
    return validate(raw, source=f"compare ({name})")


def _strategy_rate(lr: float | str | None, strategy_name: str) -> float | str | None:
    """optim.lr is the rate for full fine-tuning; the strategy's factor scales it (tunelab.rates).
    Unset, each run gets its own strategy's default; auto, its own range test (LoRA and full want
    different rates)."""
    if lr is None or lr == "auto":
        return lr
    return min(HIGHEST_RATE, lr * rate_factor(strategy_name))


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key, nested sections merged rather than replaced."""
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def run_compare(config: RunConfig, names: list[str], output: Path, console: Console, progress: bool) -> dict:
    rows = []
    configs = {name: strategy_config(config, name) for name in names}  # every config checked before any run
    (output / "configs").mkdir(exist_ok=True)
    for index, name in enumerate(names, start=1):
        run_config = configs[name]
        config_file = output / "configs" / f"{name}.yaml"
        write_atomic(config_file, dump_config(run_config))
        title = f"[bold]{index}/{len(names)}[/] {name} (lr {rate_text(run_config.learning_rate())})"
        if progress:
            console.print(title)
            with console.status(f"{title}: training and evaluating in its own process ..."):
                row = _run_one(name, run_config, config_file, output / name)
        else:
            row = _run_one(name, run_config, config_file, output / name)
        rows.append(row)
        if progress:
            console.print(_one_line(row, config.train.metric))
    summary = {"metric": config.train.metric, "rows": rows}
    write_json(output / COMPARISON, summary)
    from tunelab.report.compare import write_comparison_report

    write_comparison_report(output, summary, output / REPORT)
    return summary


def _run_one(name: str, run_config: RunConfig, config_file: Path, run_dir: Path) -> dict:
    command = [sys.executable, "-m", "tunelab", "train", str(config_file), "--output", str(run_dir), "--json", "-q"]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    row = {"strategy": name, "lr": run_config.learning_rate(), "run_dir": str(run_dir), "wall_seconds": wall}
    if finished.returncode != 0 and not finished.stdout.strip().startswith("{"):
        return row | {"error": _error_line(finished.stderr)}
    results = json.loads(finished.stdout)
    if results.get("lr_found"):
        row["lr"] = results["lr_found"]["suggested"]
    final = results["final"]
    row |= {
        "validation": _headline(final.get("validation", {})),
        "test": _headline(final["test"]) if "test" in final else None,
        "trainable": results["parameters"]["trainable"],
        "total": results["parameters"]["total"],
        "trainable_percent": results["parameters"]["trainable_percent"],
        "train_seconds": results["train_seconds"],
        "peak_memory_mb": results["peak_memory_mb"],
        "checkpoint_mb": results["saved_model_mb"],
        "steps": results["steps"],
    }
    retain = results.get("retain", {})
    if retain:  # means over the retain sets
        metric = retain_metric(retain)
        row["retain_score"] = sum(r["final"][metric] for r in retain.values()) / len(retain)
        row["forgetting"] = sum(r["forgetting"] for r in retain.values()) / len(retain)
    if "drift" in results:
        row["drift"] = results["drift"]["validation_cka"]
    if results.get("diverged"):
        row["error"] = results["stop_reason"]
    return row


def _headline(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in scalar_metrics(metrics)}


def _error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["failed without a message"])[-1].removeprefix("error: ")


def _one_line(row: dict, metric: str) -> str:
    if "error" in row and "validation" not in row:
        return f"  [red]failed:[/] {row['error']}"
    value = row["validation"].get(metric)
    shown = f"validation {metric} {value:.4f}, " if value is not None else ""
    return f"  {shown}{row['trainable_percent']:.2f}% trainable, {row['train_seconds']:.1f} s"
