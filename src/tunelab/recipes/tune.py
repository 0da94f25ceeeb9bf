"""`tunelab tune`: an Optuna study over the config's search space; every trial is a tunelab run.

The config as given is the study's first trial when its values lie in the space, so the table
shows what tuning bought. Results: a trial table, ``best.yaml`` (ready to run), ``tune.json`` and
a report with the optimisation history, parameter importances and, with two objectives, the
Pareto front.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape

from tunelab.builder import run_training
from tunelab.builder.runtime import quiet_libraries
from tunelab.config import RunConfig, dump_config
from tunelab.errors import UserError
from tunelab.io import write_atomic, write_json
from tunelab.rundir import REPORT, claimed
from tunelab.search.space import applied, check_space, current_values, default_space, draw
from tunelab.search.study import ReportToTrial, open_study, worker_name
from tunelab.tasks import get_task

SUMMARY = "tune.json"
BEST = "best.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def run_tune(config: RunConfig, output: Path, trials: int, storage: str | None, console: Console, show: bool) -> dict:
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and metric names are marked experimental; they are what makes studies resumable.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    tune = config.tune
    metric = tune.metric or config.train.metric
    space = dict(tune.space) or default_space(config)
    check_space(config, space)
    url = storage or f"sqlite:///{(output / 'study.db').resolve()}"
    try:
        study = open_study(url, tune, metric, config.seed, lower_is_better=get_task(config).lower_is_better)
    except (ValueError, ImportError, optuna.exceptions.OptunaError) as error:
        raise UserError(f"--storage: cannot open the study at {url}: {error}") from None
    objectives = [metric] + ([tune.second_objective] if tune.second_objective else [])
    study.set_metric_names(objectives)
    _enqueue_config_as_given(study, config, space)
    multi = len(objectives) > 1
    done = _finished(study)
    if show:
        console.print(f"study: {done} of {trials} trials finished; searching {', '.join(space)}")

    def objective(trial: optuna.Trial):
        values = draw(trial, space)
        trial.set_user_attr("worker", worker_name())
        run_config = applied(config, values | {"train.checkpoint_every": None}, f"trial {trial.number}")
        pruning = () if multi or tune.pruner == "none" else (ReportToTrial(trial, metric),)
        with claimed(output / "trials" / f"trial-{trial.number:04d}", overwrite=True) as run_dir:
            trial.set_user_attr("run_dir", str(run_dir))
            results = run_training(run_config, run_dir, console, progress=False, callbacks=pruning)
        trial.set_user_attr("train_seconds", results["train_seconds"])
        trial.set_user_attr("trainable_parameters", results["parameters"]["trainable"])
        value = results["final"]["validation"].get(metric)
        if value is None or not math.isfinite(value) or results["diverged"]:
            raise optuna.TrialPruned("the run diverged")
        if multi:
            return value, float(results["parameters"]["trainable"] if objectives[1] == "trainable_parameters"
                                 else results["train_seconds"])  # fmt: skip
        return value

    def said(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if show:
            console.print(f"  {escape(_trial_line(trial, objectives))}")

    remaining = max(0, trials - done)
    if remaining:
        study.optimize(
            objective, n_trials=remaining + 1, catch=(UserError,),
            callbacks=[MaxTrialsCallback(trials, states=FINISHED), said],
        )  # fmt: skip
    summary = _summary(study, objectives, space)
    best = summary.get("best")
    if best:
        write_atomic(output / BEST, dump_config(applied(config, best["params"], "best trial")))
    write_json(output / SUMMARY, summary)
    from tunelab.report.tune import tune_page

    write_atomic(output / REPORT, tune_page(summary, study))
    return summary


def _enqueue_config_as_given(study: optuna.Study, config: RunConfig, space: dict) -> None:
    if study.user_attrs.get("config_enqueued"):
        return
    study.set_user_attr("config_enqueued", True)
    values = current_values(config, space)
    if values is not None:
        # Two workers starting together may both get here; skip_if_exists keeps it to one in practice.
        study.enqueue_trial(values, user_attrs={"config_as_given": True}, skip_if_exists=True)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _trial_line(trial, objectives: list[str]) -> str:
    if trial.state == TrialState.COMPLETE:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in zip(objectives, trial.values, strict=True))
    elif trial.state == TrialState.PRUNED:
        last = max(trial.intermediate_values.items(), default=(None, None))
        shown = "pruned" + (f" at evaluation {last[0]} ({objectives[0]} {last[1]:.4g})" if last[0] is not None else "")
    else:
        shown = trial.state.name.lower()
    params = ", ".join(f"{key}={_value(value)}" for key, value in trial.params.items())
    given = " (the config as given)" if trial.user_attrs.get("config_as_given") else ""
    return f"trial {trial.number}{given}: {shown}  [{params}]"


def _value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _summary(study: optuna.Study, objectives: list[str], space: dict) -> dict:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({
            "number": trial.number,
            "state": trial.state.name.lower(),
            "params": trial.params,
            "values": trial.values,
            "pruned_at": max(trial.intermediate_values, default=None) if trial.state == TrialState.PRUNED else None,
            "seconds": trial.duration.total_seconds() if trial.duration else None,
            "worker": trial.user_attrs.get("worker"),
            "config_as_given": bool(trial.user_attrs.get("config_as_given")),
            "run_dir": trial.user_attrs.get("run_dir"),
        })  # fmt: skip
    complete = [row for row in rows if row["state"] == "complete"]
    summary = {
        "objectives": objectives,
        "directions": [d.name.lower() for d in study.directions],
        "space": {key: found.model_dump(exclude_none=True) for key, found in space.items()},
        "counts": {state: sum(row["state"] == state for row in rows) for state in sorted({r["state"] for r in rows})},
        "trials": rows,
    }
    if complete and len(objectives) == 1:
        best = study.best_trial
        summary["best"] = {"number": best.number, "params": best.params, "value": best.value}
        given = [row for row in complete if row["config_as_given"]]
        if given:
            summary["config_as_given"] = {"number": given[0]["number"], "value": given[0]["values"][0]}
    elif complete:
        front = sorted(study.best_trials, key=lambda t: t.values[0], reverse=study.directions[0].name == "MAXIMIZE")
        summary["pareto"] = [{"number": t.number, "params": t.params, "values": t.values} for t in front]
        summary["best"] = {"number": front[0].number, "params": front[0].params, "value": front[0].values[0]}
    if complete and len(space) > 1 and len(complete) >= 3:
        try:
            sign = -1.0 if summary["directions"][0] == "maximize" else 1.0  # the evaluator ranks low values best
            with warnings.catch_warnings():  # it warns that low values count as good, whatever the target
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[0])
            summary["importances"] = {key: float(value) for key, value in importances.items()}
        except (RuntimeError, ValueError):  # too few trials or no variation to explain
            pass
    return summary
