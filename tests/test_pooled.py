"""Sentence-transformers models are read the way they were trained: mean of the token vectors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunelab.builder import run_training
from tunelab.cli import main
from tunelab.config import validate
from tunelab.data.labels import LabelMap
from tunelab.models import load_model
from tunelab.models.pooled import PooledClassifier
from tunelab.rundir import MODEL, RESULTS, prepare_run_dir

LABELS = LabelMap(("neg", "pos"))


@pytest.fixture(scope="module")
def tiny_sentence_model(tiny_bert, tmp_path_factory):
    """The tiny BERT laid out as a sentence-transformers model that declares mean pooling."""
    folder = shutil.copytree(tiny_bert, tmp_path_factory.mktemp("st") / "model")
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def loaded(source, pooling="auto"):
    return load_model(validate({"model": {"source": str(source), "pooling": pooling}, "data": {"train": "x"}}), LABELS)


def test_auto_follows_the_models_own_pooling(tiny_sentence_model, tiny_bert):
    assert isinstance(loaded(tiny_sentence_model).model, PooledClassifier)
    assert loaded(tiny_sentence_model).model.pooling == "mean"
    assert type(loaded(tiny_bert).model).__name__ == "BertForSequenceClassification"
    assert type(loaded(tiny_sentence_model, "head").model).__name__ == "BertForSequenceClassification"
    assert loaded(tiny_bert, "cls").model.pooling == "cls"
    model = loaded(tiny_sentence_model).model
    assert not any("pooler" in name for name, _ in model.named_parameters())  # unused weights would stall DDP


def test_mean_pooling_ignores_padding(tiny_sentence_model):
    source = loaded(tiny_sentence_model)
    model, tokenizer = source.model.eval(), source.tokenizer
    alone = tokenizer(["a fine movie"], return_tensors="pt")
    batch = tokenizer(
        ["a fine movie", "a much longer and rather more boring movie than that"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**batch)[0], model(**alone)[0], atol=1e-5, rtol=1e-5)


def test_a_pooled_run_saves_a_plain_encoder_and_reloads_to_the_same_numbers(
    tiny_sentence_model, text_config, tmp_path, capsys
):
    from transformers import AutoModel

    config = text_config | {"model": {"source": str(tiny_sentence_model)}}
    results = run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    folder = tmp_path / "run" / MODEL
    assert json.loads((folder / "tunelab.json").read_text())["pooling"] == "mean"
    assert (folder / "modules.json").exists() and (folder / "2_Dense" / "model.safetensors").exists()
    encoder = AutoModel.from_pretrained(folder)  # plain transformers reads the fine-tuned encoder
    base = AutoModel.from_pretrained(tiny_sentence_model)
    moved = [not torch.equal(a, b) for a, b in zip(encoder.parameters(), base.parameters(), strict=False)]
    assert sum(moved) > len(moved) // 2

    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for split in ("validation", "test"):
        assert again[split]["loss"] == pytest.approx(results["final"][split]["loss"], abs=1e-6)

    # As a source for a new task the head starts fresh; for the same labels it is kept.
    assert loaded(folder).fresh_head == []
    other = load_model(validate({"model": {"source": str(folder)}, "data": {"train": "x"}}), LabelMap(("a", "b")))
    assert other.fresh_head == ["classifier.bias", "classifier.weight"]

    # A folder saved before the sentence-transformers layout kept its head in classifier.safetensors.
    dense = load_file(folder / "2_Dense" / "model.safetensors")
    save_file({"weight": dense["linear.weight"], "bias": dense["linear.bias"]}, folder / "classifier.safetensors")
    shutil.rmtree(folder / "2_Dense")
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["loss"] == pytest.approx(results["final"]["test"]["loss"])

    # Without any head it is refused, not read with a random one.
    (folder / "classifier.safetensors").unlink()
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks trained weights (classifier.bias, classifier.weight)" in err and len(err.splitlines()) == 1


def test_every_parameter_of_a_pooled_model_gets_a_gradient(tiny_sentence_model):
    source = loaded(tiny_sentence_model)
    inputs = source.tokenizer(["a fine movie", "dull"], padding=True, return_tensors="pt")
    source.model(**inputs).sum().backward()
    assert [n for n, p in source.model.named_parameters() if p.grad is None] == []


def test_lora_on_a_pooled_model_reloads_with_its_pooling(tiny_sentence_model, text_config, tmp_path, capsys):
    config = text_config | {"model": {"source": str(tiny_sentence_model)}, "strategy": {"name": "lora"}}
    results = run_training(validate(config), prepare_run_dir(tmp_path / "lora", False), progress=False)
    assert json.loads((tmp_path / "lora" / MODEL / "tunelab.json").read_text())["pooling"] == "mean"
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "lora"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test"]["loss"] == pytest.approx(results["final"]["test"]["loss"], abs=1e-6)
    assert json.loads((tmp_path / "lora" / RESULTS).read_text())["parameters"]["trainable_percent"] < 50
