"""Fairness: with data.group_column, every evaluation and the audit report metrics per group and
the largest gap between groups; the base model's zero-shot read in the audit."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import sentiment_rows
from tunelab.cli import main
from tunelab.evaluate.fairness import MIN_GROUP_EXAMPLES, group_metrics


def test_group_metrics_name_the_best_and_worst_group_and_the_gap():
    # Group "a": all 40 right. Group "b": 20 of 40 right. Group "tiny": 3 rows, all wrong.
    truth = np.array([0, 1] * 20 + [0, 1] * 20 + [0, 1, 0])
    predicted = truth.copy()
    predicted[40:60] = 1 - truth[40:60]
    predicted[80:] = 1 - truth[80:]
    groups = ["a"] * 40 + ["b"] * 40 + ["tiny"] * 3
    found = group_metrics(truth, predicted, groups, num_labels=2)
    assert found["by_group"]["a"]["accuracy"] == 1.0 and found["by_group"]["b"]["accuracy"] == 0.5
    assert found["by_group"]["tiny"]["examples"] == 3 and found["by_group"]["tiny"]["accuracy"] == 0.0
    # The 3-row group is listed but left out of the gap: a gap to three rows is noise.
    assert found["compared"] == ["a", "b"] and MIN_GROUP_EXAMPLES > 3
    assert found["largest_gap"]["accuracy"] == {"gap": 0.5, "highest": "a", "lowest": "b"}
    # Positive rate: "a" predicts 1 for its 20 positives (0.5); "b" flips 20 rows, 10 of each class (0.5).
    assert found["demographic_parity_difference"] == pytest.approx(0.0)
    # True positive rate: a 1.0, b 0.5 -> equalized odds difference 0.5.
    assert found["equalized_odds_difference"] == pytest.approx(0.5)


def test_with_fewer_than_two_large_groups_every_group_is_compared():
    truth = np.array([0, 1, 0, 1, 0, 1])
    found = group_metrics(truth, truth, ["x", "x", "x", "y", "y", "y"], num_labels=3)
    assert found["compared"] == ["x", "y"] and found["largest_gap"]["accuracy"]["gap"] == 0.0
    assert "demographic_parity_difference" not in found  # a three-class task has no single positive class


@pytest.fixture
def grouped_files(tmp_path):
    """Sentiment rows in two dialects; in dialect "b" one word in three is replaced by noise,
    so a model does worse there."""
    rng = random.Random(0)

    def rows(count: int, seed: int) -> list[str]:
        lines = []
        for index, (text, label) in enumerate(sentiment_rows(count, seed)):
            group = "a" if index % 3 else "b"
            if group == "b":
                text = " ".join(word if rng.random() < 0.6 else "zzz" for word in text.split())
            lines.append(f"{text},{label},{group}")
        return lines

    paths = {}
    for name, count, seed in (("train", 90, 1), ("validation", 60, 2), ("test", 60, 3)):
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text("text,label,dialect\n" + "\n".join(rows(count, seed)) + "\n")
    return paths


def grouped_config(tiny_bert, files) -> dict:
    return {
        "seed": 0,
        "model": {"source": str(tiny_bert)},
        "data": {key: str(path) for key, path in files.items()} | {"max_length": 32, "group_column": "dialect"},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 16, "checkpoint_every": None},
    }


def test_training_reports_every_split_by_group_before_and_after(
    tiny_bert, grouped_files, write_config, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    argv = ["train", str(write_config(grouped_config(tiny_bert, grouped_files))), "-o", str(run_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validation by dialect" in out and "largest accuracy gap" in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["group_column"] == "dialect"
    for stage in ("base", "final"):
        for split in ("train", "validation", "test"):
            groups = results[stage][split]["groups"]
            assert set(groups["by_group"]) == {"a", "b"}
            assert sum(row["examples"] for row in groups["by_group"].values()) == results[stage][split]["examples"]
    validation = results["final"]["validation"]
    by_group = validation["groups"]["by_group"]
    # The per-group accuracies, weighted by size, give back the split's accuracy.
    weighted = sum(row["accuracy"] * row["examples"] for row in by_group.values()) / validation["examples"]
    assert weighted == pytest.approx(validation["accuracy"])
    gap = validation["groups"]["largest_gap"]["accuracy"]
    assert gap["gap"] == pytest.approx(abs(by_group["a"]["accuracy"] - by_group["b"]["accuracy"]))
    page = (run_dir / "report.html").read_text()
    assert "By dialect" in page and "accuracy by dialect (validation)" in page


def test_eval_scores_groups_when_the_file_has_the_column_and_skips_them_when_not(
    tiny_bert, grouped_files, write_config, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    config = grouped_config(tiny_bert, grouped_files) | {"evaluate": {"base": False}}
    assert main(["train", str(write_config(config)), "-o", str(run_dir), "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--data", str(grouped_files["test"]), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["data"]["groups"]["by_group"]) == {"a", "b"}
    plain = tmp_path / "plain.csv"
    plain.write_text("text,label\ngood movie,pos\nbad plot,neg\n")
    assert main(["eval", str(run_dir), "--data", str(plain), "--json"]) == 0
    assert "groups" not in json.loads(capsys.readouterr().out)["data"]


def test_a_missing_group_column_names_the_column_and_the_file(tiny_bert, sentiment_files, write_config, capsys):
    config = {"model": {"source": str(tiny_bert)}, "data": {"train": str(sentiment_files["train"])}}
    config["data"]["group_column"] = "dialect"
    assert main(["train", str(write_config(config)), "-o", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "column 'dialect' not in" in err and "train.csv" in err


def test_preparation_keeps_groups_with_their_rows(tmp_path):
    from tunelab.config import PrepareConfig
    from tunelab.data.prepare import prepare_split
    from tunelab.data.readers import table_split

    (tmp_path / "t.csv").write_text("text,label,g\nsame,pos,x\nsame,pos,y\nother,neg,z\nmore,neg,\n")
    split = table_split(tmp_path / "t.csv", "train", "text", "label", group_column="g")
    prepared, record = prepare_split(split, PrepareConfig(deduplicate=True))
    assert record["duplicates_dropped"] == 1
    assert list(zip(prepared.inputs, prepared.groups, strict=True)) == [
        ("same", "x"),
        ("other", "z"),
        ("more", "(missing)"),
    ]


def test_audit_counts_groups_and_probes_accuracy_per_group(tiny_bert, grouped_files, write_config, capsys):
    config = grouped_config(tiny_bert, grouped_files)
    assert main(["audit", str(write_config(config)), "-o", str(grouped_files["train"].parent / "a"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    train = report["splits"]["train"]["groups"]
    assert train["a"]["rows"] == 60 and train["b"]["rows"] == 30
    assert sum(train["b"]["labels"].values()) == 30
    probe = report["label_errors"]["groups"]
    assert set(probe["by_group"]) == {"a", "b"} and probe["largest_gap"]["accuracy"]["gap"] is not None
    page = (grouped_files["train"].parent / "a" / "audit.html").read_text()
    assert "<h2>Groups</h2>" in page and "probe in train" not in page  # the terminal caption stays in the terminal


def test_audit_reads_the_base_model_zero_shot_from_label_names(tiny_bert, tmp_path, write_config, capsys):
    rows = sentiment_rows(40)
    (tmp_path / "words.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
    numbered = "\n".join(f"{t},{1 if y == 'pos' else 0}" for t, y in rows)
    (tmp_path / "numbers.csv").write_text("text,label\n" + numbered + "\n")

    def audited(data: dict) -> dict:
        config = {"model": {"source": str(tiny_bert)}, "data": data}
        assert main(["audit", str(write_config(config)), "-o", str(tmp_path / "a"), "--json"]) == 0
        return json.loads(capsys.readouterr().out)["base_model"]

    words = audited({"train": str(tmp_path / "words.csv")})
    assert 0.0 <= words["zero_shot"] <= 1.0 and words["zero_shot_names"] == {"neg": "neg", "pos": "pos"}
    assert words["majority_class"] == 0.5 and 0.0 <= words["linear_probe"] <= 1.0
    numbers = audited({"train": str(tmp_path / "numbers.csv")})
    assert "zero_shot" not in numbers and "data.label_names" in numbers["zero_shot_skipped"]
    named = audited({"train": str(tmp_path / "numbers.csv"), "label_names": {0: "negative", 1: "positive"}})
    assert named["zero_shot_names"] == {"0": "negative", "1": "positive"}


def test_zero_shot_labels_each_row_with_the_nearest_label_name():
    from tunelab.data.label_issues import zero_shot

    names = np.array([[1.0, 0.0], [0.0, 1.0]])  # sorted classes: "neg", "pos"
    rows = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    assert zero_shot(rows, ["neg", "pos", "pos", "pos"], names) == 0.75
