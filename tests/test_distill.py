"""`tunelab distill`: a student cut from the teacher's own layers, trained on its softened outputs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tunelab.cli import main
from tunelab.compress.distill import distillation_terms, every_kth_layer
from tunelab.loss import TrainingLoss
from tunelab.tasks.classification import Classification


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert, sentiment_files):
    from conftest import make_text_config

    folder = tmp_path_factory.mktemp("teacher")
    config = make_text_config(tiny_bert, sentiment_files) | {"seed": 0}
    config["train"] |= {"epochs": 4, "checkpoint_every": None}
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(folder / "run.yaml"), "-o", str(folder / "run"), "-q"]) == 0
    return folder / "run"


def test_a_student_keeps_evenly_spaced_teacher_blocks_with_their_weights():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32)
    )
    student, kept = every_kth_layer(model, 3)
    assert kept == [1, 3, 5] and len(student.bert.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    for mine, theirs in zip(student.bert.encoder.layer, [model.bert.encoder.layer[i] for i in kept], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine.parameters(), theirs.parameters(), strict=True))
    assert len(model.bert.encoder.layer) == 6  # the teacher is left whole
    ids = torch.randint(0, 50, (2, 5))
    assert student(input_ids=ids).logits.shape == (2, 2)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.layer(x)


def test_distillation_from_an_identical_teacher_is_only_the_label_loss():
    import copy

    torch.manual_seed(0)
    student = Tiny()
    settings = type("Settings", (), {"alpha": 0.7, "temperature": 2.0, "hidden": 0.0})()
    terms = distillation_terms(copy.deepcopy(student), settings)
    loss = TrainingLoss(Classification(), terms, task_weight=1 - settings.alpha)
    batch = {"x": torch.randn(6, 4), "labels": torch.randint(0, 3, (6,))}
    hard = torch.nn.functional.cross_entropy(student(batch["x"]), batch["labels"])
    assert loss(student, batch).item() == pytest.approx(0.3 * hard.item(), rel=1e-5)  # the KL term is zero
    with torch.no_grad():
        student.layer.weight.add_(1.0)
    moved = torch.nn.functional.cross_entropy(student(batch["x"]), batch["labels"])
    assert loss(student, batch).item() > 0.3 * moved.item()  # now the teacher pulls as well


def test_distill_writes_a_normal_run_and_measures_it_beside_the_teacher(teacher, tmp_path, capsys):
    output = tmp_path / "student"
    argv = ["distill", str(teacher), "--student", "layers:1", "-o", str(output), "--set", "distill.alpha=0.8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "teacher → student (distill" in out and "latency, batch 32" in out
    results = json.loads((output / "results.json").read_text())
    found = results["distillation"]
    assert found["student"]["parameters"] < found["teacher"]["parameters"]
    assert found["student"]["validation"]["examples"] == found["teacher"]["validation"]["examples"]
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert saved["distill"]["alpha"] == 0.8 and saved["distill"]["teacher"] == str(teacher.resolve())
    assert json.loads((output / "student-init" / "kept_layers.json").read_text()) == {"teacher_blocks_kept": [1]}
    # A normal run directory: eval and quantize work on it.
    assert main(["eval", str(output), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["accuracy"] == pytest.approx(
        found["student"]["validation"]["accuracy"]
    )
    assert main(["quantize", str(output), "-o", str(tmp_path / "int8"), "--json"]) == 0


def test_distill_mistakes_end_with_one_line(teacher, tmp_path, capsys):
    assert main(["distill", str(teacher), "--student", "layers:5", "-o", str(tmp_path / "a")]) == 2
    assert "choose 1 to 1 of the teacher's 2 blocks" in capsys.readouterr().err
    assert main(["distill", str(tmp_path / "nowhere"), "--student", "layers:1", "-o", str(tmp_path / "b")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # a failed claim leaves nothing


def test_distillation_and_a_forgetting_method_share_one_loss(teacher, tmp_path, capsys):
    output = tmp_path / "student"
    argv = ["distill", str(teacher), "--student", "layers:1", "-o", str(output), "-q", "--json"]
    assert main([*argv, "--set", "forgetting.l2sp={strength: 0.1}"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["forgetting_methods"]["l2sp"] == {"strength": 0.1} and "distillation" in results
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert saved["distill"]["teacher"] == str(teacher.resolve()) and saved["forgetting"]["l2sp"]["strength"] == 0.1
