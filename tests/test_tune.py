"""`tunelab tune`: the search space, a study that beats the config as given, pruning, and a study
that survives a kill and is shared by two processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from tunelab.cli import main
from tunelab.config import SearchRange, validate
from tunelab.errors import UserError
from tunelab.search.space import applied, check_space, current_values, default_space
from tunelab.search.study import open_study

TRANSFER = {
    "task": "image-classification",
    "seed": 0,
    "model": {"source": "digits-cnn"},
    "data": {
        "train": "digits",
        "digits_classes": [5, 6, 7, 8, 9],
        "digits_train_per_class": 20,
        "digits_validation_per_class": 20,
    },
    "strategy": {"name": "full", "train_last_n_blocks": 2},
    "train": {"batch_size": 10},
    "tune": {
        "space": {
            "optim.lr": {"low": 1e-5, "high": 1e-1, "log": True},
            "train.epochs": {"low": 2, "high": 12, "integer": True},
            "strategy.name": {"choices": ["full", "partial"]},
        }
    },
}


def write(tmp_path, config: dict, name: str = "tune"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def trial_states(database) -> list[str]:
    """The states of a study's trials, read without writing: a watcher that opened the database
    through Optuna would race the worker to create its tables."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60)) as db:
            return [state for (state,) in db.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # not created yet, or its tables not yet
        return []


def running_trial_has_begun(database) -> bool:
    """Whether the running trial has beaten and drawn its parameters: killed then, it is retried
    with those parameters (killed before, it has none to keep)."""
    query = (
        "SELECT count(*) FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND EXISTS (SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id)"
    )
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60)) as db:
        return db.execute(query).fetchone()[0] == 1


def study_of(folder) -> optuna.Study:
    # The same patience with a busy writer as tunelab's own workers have.
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{folder / 'study.db'}", engine_kwargs={"connect_args": {"timeout": 60}}
    )
    return optuna.load_study(study_name="tunelab", storage=storage)


def test_the_default_space_sits_around_the_config_and_a_bad_key_is_named():
    config = validate({"data": {"train": "x.csv"}, "optim": {"lr": 1e-3}, "train": {"epochs": 4}})
    space = default_space(config)
    assert space["optim.lr"].low == pytest.approx(1e-4) and space["optim.lr"].high == pytest.approx(1e-2)
    assert (space["train.epochs"].low, space["train.epochs"].high) == (2, 8)
    assert current_values(config, space) == {
        "optim.lr": 1e-3,
        "optim.weight_decay": 0.01,
        "schedule.warmup_ratio": 0.0,
        "train.epochs": 4,
    }
    assert applied(config, {"optim.lr": 0.05, "strategy.name": "lora"}, "trial").strategy.name == "lora"
    unset = validate({"data": {"train": "x.csv"}})  # no rate: the space sits around the one it trains at
    assert default_space(unset)["optim.lr"].low == pytest.approx(1e-5)
    assert current_values(unset, default_space(unset))["optim.lr"] == pytest.approx(1e-4)
    with pytest.raises(UserError, match="tune.space.optim.lrr"):
        check_space(config, {"optim.lrr": SearchRange(low=1e-4, high=1e-2)})
    with pytest.raises(UserError, match=r"tune.space.strategy.name: 'magic' does not make a valid run"):
        check_space(config, {"strategy.name": SearchRange(choices=["full", "magic"])})


def test_a_study_beats_the_config_as_given_and_prunes_hopeless_trials(tmp_path, capsys):
    output = tmp_path / "study"
    assert main(["tune", str(write(tmp_path, TRANSFER)), "--trials", "12", "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "the config as given" in out and "ready to run: tunelab train" in out
    summary = json.loads((output / "tune.json").read_text())
    given = summary["config_as_given"]
    assert given["number"] == 0  # tunelab's defaults (its default rate, 3 epochs) as the first trial
    assert summary["best"]["value"] > given["value"] + 0.2
    assert summary["counts"].get("pruned", 0) >= 1
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 12
    best = yaml.safe_load((output / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(summary["best"]["params"]["optim.lr"])
    assert (output / "report.html").read_text().count("<img") >= 2
    # The best config runs as it stands and scores what its trial scored.
    assert main(["train", str(output / "best.yaml"), "-o", str(tmp_path / "best"), "--json"]) == 0
    results = json.loads((tmp_path / "best" / "results.json").read_text())
    assert results["final"]["validation"]["accuracy"] == pytest.approx(summary["best"]["value"])


def test_two_objectives_give_a_pareto_front(tmp_path, capsys):
    config = TRANSFER | {"tune": TRANSFER["tune"] | {"second_objective": "trainable_parameters"}}
    config["tune"]["space"] = {
        "strategy.name": {"choices": ["full", "bitfit"]},
        "optim.lr": {"low": 1e-3, "high": 3e-2},
    }
    output = tmp_path / "pareto"
    assert main(["tune", str(write(tmp_path, config)), "--trials", "4", "-o", str(output), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objectives"] == ["accuracy", "trainable_parameters"]
    assert summary["directions"] == ["maximize", "minimize"]
    assert summary["pareto"] and "pruned" not in summary["counts"]  # Optuna cannot prune two objectives
    assert "Pareto front" in (output / "report.html").read_text()


def tune_process(config_path, output, trials: int, storage: str | None = None, log=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "tunelab", "tune", str(config_path), "--trials", str(trials), "-o", str(output)]
    command += ["--storage", storage] if storage else []
    # One thread, like the in-process tests: two of these share the machine's cores.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)


def quick(tmp_path) -> dict:
    """Trials of about a second, heartbeats each second: a dead trial is retried after two."""
    config = TRANSFER | {"tune": TRANSFER["tune"] | {"heartbeat_seconds": 1, "pruner": "none"}}
    config["tune"]["space"] = {"optim.lr": {"low": 1e-3, "high": 3e-2, "log": True}, "train.epochs": {"choices": [4]}}
    config |= {"optim": {"lr": 3e-3}, "train": {"batch_size": 10, "epochs": 4}}  # inside the space: trial 0
    return config


def test_a_killed_study_continues_and_loses_no_trial(tmp_path):
    config_path, output = write(tmp_path, quick(tmp_path)), tmp_path / "study"
    with open(tmp_path / "first.log", "w") as log:
        first, db = tune_process(config_path, output, 8, log=log), output / "study.db"
        deadline = time.time() + 600  # generous: a busy CI machine starts Python slowly
        while True:  # kill it mid-trial once three trials have finished
            time.sleep(0.2)
            if time.time() > deadline or first.poll() is not None:
                first.kill()
                pytest.fail(f"the study never reached three trials and a fourth running:\n{log.name}")
            states = trial_states(output / "study.db")
            if states.count("COMPLETE") >= 3 and states[-1] == "RUNNING" and running_trial_has_begun(db):
                break
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    before = {t.number: t.values for t in study_of(output).get_trials() if t.state.name == "COMPLETE"}
    killed = [t.number for t in study_of(output).get_trials() if t.state.name == "RUNNING"]
    assert len(before) >= 3 and len(killed) == 1
    time.sleep(2.5)  # past the grace period: the dead trial's heartbeat has stopped
    with open(tmp_path / "second.log", "w") as log:
        assert tune_process(config_path, output, 8, log=log).wait(timeout=300) == 0, (
            tmp_path / "second.log"
        ).read_text()
    trials = study_of(output).get_trials()
    complete = {t.number: t.values for t in trials if t.state.name == "COMPLETE"}
    assert len(complete) == 8  # the count grew to the target...
    assert all(complete[number] == values for number, values in before.items())  # ...keeping every result
    dead = next(t for t in trials if t.number == killed[0])
    assert dead.state.name == "FAIL"
    retried = [
        t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed[0]
    ]
    assert retried and retried[0].params == dead.params and retried[0].state.name == "COMPLETE"


def test_a_trial_beats_from_the_moment_it_runs_so_one_killed_at_once_is_retried(tmp_path):
    tune = validate(quick(tmp_path)).tune  # heartbeats each second: stale after two
    database = tmp_path / "study.db"
    study = open_study(f"sqlite:///{database}", tune, "accuracy", seed=0)
    study.enqueue_trial({"optim.lr": 0.01})
    queued = study.ask()  # a queued trial taken up
    orphan = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})  # a new one
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        beating = {trial_id for (trial_id,) in db.execute("SELECT trial_id FROM trial_heartbeats")}
        assert beating == {queued._trial_id, orphan._trial_id}  # before any heartbeat thread started
        # Killed right away: its process never beat again.
        db.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') WHERE trial_id = ?",
            (orphan._trial_id,),
        )
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "WAITING"]  # the one that beats lives on
    assert trials[2].params == {"optim.lr": orphan.params["optim.lr"]}  # queued again as it was


def test_two_processes_share_one_study(tmp_path):
    config_path = write(tmp_path, quick(tmp_path))
    database = tmp_path / "shared.db"
    storage = f"sqlite:///{database}"
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115
    try:
        first = tune_process(config_path, tmp_path / "out0", 10, storage, logs[0])
        deadline = time.time() + 600
        while not {"COMPLETE", "PRUNED"} & set(trial_states(database)) and time.time() < deadline:
            time.sleep(0.2)
        second = tune_process(config_path, tmp_path / "out1", 10, storage, logs[1])  # joins mid-study
        codes = [worker.wait(timeout=300) for worker in (first, second)]
    finally:
        for log in logs:
            log.close()
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    trials = optuna.load_study(study_name="tunelab", storage=storage).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 10 <= len(finished) <= 11  # each stops once the shared study holds ten
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran some of them
    assert len({t.number for t in trials}) == len(trials)
    assert sum(bool(t.user_attrs.get("config_as_given")) for t in trials) == 1  # queued by the first only


def test_a_folder_holding_another_study_is_refused(tmp_path, capsys):
    output = tmp_path / "study"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert main(["tune", str(write(tmp_path, TRANSFER)), "--trials", "1", "-o", str(output)]) == 2
    assert "not a tunelab study" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "mine"


def test_a_worker_that_loses_the_race_to_create_the_tables_opens_the_winners(tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    from tunelab.search import study as study_module

    real, calls = study_module.HeartbeatStorage, []

    def racing(url, **kwargs):  # the first attempt meets the other worker's schema row
        calls.append(url)
        if len(calls) == 1:
            real(url)  # the winner creates the tables...
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(url, **kwargs)

    monkeypatch.setattr(study_module, "HeartbeatStorage", racing)
    monkeypatch.setattr(study_module.time, "sleep", lambda seconds: None)
    storage = study_module._storage(f"sqlite:///{tmp_path / 'race.db'}", heartbeat=5)
    assert len(calls) == 2 and storage.heartbeat_interval == 5  # ...and the loser opened them
