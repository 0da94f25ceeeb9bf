"""The Optuna study behind `tunelab tune`: its storage, sampler, pruner and objective.

Storage is a relational database (SQLite in the output folder by default, or any URL Optuna
takes), with heartbeats: a trial whose process died stops beating, is failed once the grace
period passes, and is queued again with the same parameters (RetryHeartbeatStaleTrialCallback), so a
killed study loses no trial. Several processes on one storage share the study.

Optuna judges staleness by the last heartbeat and skips a trial that has none, and its first beat
comes from a thread started only once the trial has drawn its parameters: a process killed in
between left that trial RUNNING for good, never retried (seen in CI). `HeartbeatStorage` records
the first beat in the storage call that makes a trial run, so staleness is always judged by the
database's own clock.
"""

from __future__ import annotations

import os
import socket
import time

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from tunelab.engine.callbacks import Callback
from tunelab.errors import UserError, first_line

MINIMISED = {"trainable_parameters", "train_seconds"}  # besides the task's own lower-is-better metrics
STUDY_NAME = "tunelab"


def open_study(
    url: str, tune, metric: str, seed: int, name: str = STUDY_NAME, lower_is_better: frozenset = frozenset({"loss"})
) -> optuna.Study:
    """``lower_is_better``: the task's metrics that are minimised (a loss, an error)."""
    storage = _storage(url, tune.heartbeat_seconds)
    objectives = [metric] + ([tune.second_objective] if tune.second_objective else [])
    directions = ["minimize" if objective in MINIMISED | lower_is_better else "maximize" for objective in objectives]
    return optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,
        sampler=optuna.samplers.TPESampler(seed=seed + os.getpid() % 10_000, multivariate=True),
        pruner=_pruner(tune) if len(objectives) == 1 else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )


class HeartbeatStorage(RDBStorage):
    """Optuna's database storage, where a trial beats from the moment it runs: created running, or
    a queued one taken up. Optuna's own first beat comes from a thread started after sampling."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # The method both RDBStorage.create_new_trial and Optuna's caching wrapper call.
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == TrialState.RUNNING:
            self.record_heartbeat(trial._trial_id)
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state == TrialState.RUNNING:
            self.record_heartbeat(trial_id)
        return changed


def _storage(url: str, heartbeat: int, attempts: int = 5) -> RDBStorage:
    """The database; two processes starting at once on a new one may race to create its tables (the
    loser sees a locked database or a duplicate schema version), and the loser simply opens what the
    winner made."""
    for attempt in range(attempts):
        try:
            return HeartbeatStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
        except (OperationalError, IntegrityError) as error:
            if _cannot_open(error):
                raise UserError(f"--storage: cannot open {url}: {first_line(error.orig or error)}") from None
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _cannot_open(error: Exception) -> bool:
    """A database that will not open however long one waits (no such folder, no permission), as
    against one locked by the process creating it beside this one."""
    text = str(getattr(error, "orig", error)).lower()
    return "unable to open" in text or "readonly" in text or "permission" in text


def _pruner(tune) -> optuna.pruners.BasePruner:
    if tune.pruner == "median":
        # Judged from the third evaluation on: a slow start is not yet a bad trial.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ReportToTrial(Callback):
    """Each validation metric goes to the trial, numbered by evaluation (1, 2, ...: epochs unless
    train.eval_every says steps); a trial the pruner judges hopeless stops there."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.evaluations = trial, metric, 0

    def on_evaluate(self, state, metrics: dict) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        self.evaluations += 1
        self.trial.report(value, step=self.evaluations)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at evaluation {self.evaluations}: validation {self.metric} {value:.4f}")
