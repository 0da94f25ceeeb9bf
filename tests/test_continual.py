"""`tunelab continual`: the accuracy matrix, its summaries, both scenarios, and exact resumption."""

from __future__ import annotations

import json

import pytest
import yaml

from tunelab.cli import main
from tunelab.continual.metrics import summarise


def split_digits(**continual) -> dict:
    return {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": "cnn"},
        "data": {"train": "digits", "digits_validation_per_class": 5},
        "continual": {"benchmark": "split-digits"} | continual,
        "forgetting": {"ewc": {"strength": 1.0e5, "fisher_examples": 64}},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 3, "batch_size": 16, "checkpoint_every": None},
    }


def run(tmp_path, config: dict, name: str, capsys) -> dict:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["continual", str(path), "-o", str(tmp_path / name), "--json"]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / name / "continual.json").read_text())


def test_summaries_of_a_known_matrix():
    matrix = [[0.9, 0.2, 0.5], [0.6, 0.8, 0.4], [0.3, 0.7, 1.0]]
    initial = [0.5, 0.5, 0.5]
    found = summarise(matrix, initial)
    assert found["average_accuracy"] == pytest.approx((0.3 + 0.7 + 1.0) / 3)
    assert found["backward_transfer"] == pytest.approx(((0.3 - 0.9) + (0.7 - 0.8)) / 2)
    assert found["forward_transfer"] == pytest.approx(((0.2 - 0.5) + (0.4 - 0.5)) / 2)
    partial = summarise(matrix[:2], initial)  # an unfinished sequence: accuracy over the tasks learned so far
    assert partial == {"average_accuracy": pytest.approx((0.6 + 0.8) / 2)}


def test_class_incremental_naive_forgets_everything_and_replay_keeps_most(tmp_path, capsys):
    results = run(tmp_path, split_digits(scenario="class", methods=["naive", "replay"]), "class", capsys)
    naive, replay = results["methods"]["naive"], results["methods"]["replay"]
    assert len(naive["matrix"]) == 5 and all(len(row) == 5 for row in naive["matrix"])
    assert all(naive["matrix"][i][i] > 0.8 for i in range(5))  # each task is learned...
    assert naive["backward_transfer"] < -0.8  # ...and lost as soon as the next one arrives
    assert replay["backward_transfer"] > naive["backward_transfer"] + 0.5
    assert replay["average_accuracy"] > 2 * naive["average_accuracy"]


def test_task_incremental_prints_the_matrix_and_writes_the_report(tmp_path, capsys):
    config = split_digits(scenario="task", methods=["naive", "ewc", "lwf", "replay"])
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["continual", str(path), "-o", str(tmp_path / "task")]) == 0
    out = capsys.readouterr().out
    assert "naive: accuracy on each task" in out and "backward transfer" in out and "5 tasks, task-incremental" in out
    results = json.loads((tmp_path / "task" / "continual.json").read_text())
    assert results["tasks"] == ["0/1", "2/3", "4/5", "6/7", "8/9"]
    for found in results["methods"].values():
        assert {"average_accuracy", "backward_transfer", "forward_transfer"} <= set(found)
        assert found["initial"] == results["methods"]["naive"]["initial"]  # every method starts alike
    page = (tmp_path / "task" / "report.html").read_text()
    assert page.count("<img") == 4 and "accuracy matrix (replay)" in page


class Killed(BaseException):
    """Stops the run wherever it is, like a signal: no handler of ours catches it."""


def test_a_sequence_killed_after_two_tasks_resumes_to_the_same_matrix(tmp_path, capsys, monkeypatch):
    from tunelab.continual.sequence import Sequence

    config = split_digits(scenario="task", methods=["ewc", "replay"])
    uninterrupted = run(tmp_path, config, "whole", capsys)

    original = Sequence.learn

    def killed_at_the_third_task(self, index, console):
        if index == 2 and "ewc" in self.parts:
            raise Killed  # as a kill would, mid-task, after two tasks were saved
        return original(self, index, console)

    monkeypatch.setattr(Sequence, "learn", killed_at_the_third_task)
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(Killed):
        main(["continual", str(path), "-o", str(tmp_path / "cut"), "--json"])
    state = json.loads((tmp_path / "cut" / "ewc" / "state.json").read_text())
    assert len(state["matrix"]) == 2 and state["files"] == {
        "weights": "model-after-2.safetensors",
        "ewc": "ewc-after-2.safetensors",  # EWC's Fisher and anchor travel with the weights
    }
    monkeypatch.setattr(Sequence, "learn", original)
    capsys.readouterr()
    assert main(["continual", "--resume", str(tmp_path / "cut"), "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    for method in ("ewc", "replay"):
        assert resumed["methods"][method]["matrix"] == uninterrupted["methods"][method]["matrix"], method


def test_text_tasks_from_files_replay_through_their_own_heads(tmp_path, tiny_bert, capsys):
    from conftest import sentiment_rows

    tasks = []
    for index, (good, bad) in enumerate((("pos", "neg"), ("yes", "no"))):
        rows = [(text, good if label == "pos" else bad) for text, label in sentiment_rows(48, seed=index)]
        path = tmp_path / f"task{index}.csv"
        path.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
        tasks.append({"name": f"t{index}", "data": {"train": str(path), "max_length": 16}})
    config = {
        "model": {"source": str(tiny_bert)},
        "continual": {"tasks": tasks, "methods": ["naive", "replay+ewc"], "memory_per_task": 8},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8, "checkpoint_every": None},
    }
    results = run(tmp_path, config, "text", capsys)
    assert results["tasks"] == ["t0", "t1"]
    assert len(results["methods"]["replay+ewc"]["matrix"]) == 2


@pytest.mark.parametrize(
    ("continual", "message"),
    [
        ({"benchmark": "split-digits", "methods": ["naive", "magic"]}, "'magic' is not a continual method"),
        ({"tasks": []}, "give benchmark: split-digits, or two or more tasks"),
        ({"benchmark": "split-digits", "optim": {"lr": "auto"}}, "a continual sequence needs a rate"),
    ],
)
def test_continual_mistakes_end_with_one_line(tmp_path, capsys, continual, message):
    path = tmp_path / "bad.yaml"
    optim, continual = continual.get("optim", {}), {key: value for key, value in continual.items() if key != "optim"}
    path.write_text(yaml.safe_dump({"model": {"source": "cnn"}, "continual": continual, "optim": optim}))
    assert main(["continual", str(path), "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
