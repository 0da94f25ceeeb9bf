"""Partial fine-tuning: frozen weights stay bit-identical, trainable ones move, and the
anatomy helper finds blocks and heads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunelab.builder import run_training
from tunelab.config import validate
from tunelab.data.labels import LabelMap
from tunelab.models.cnn import DemoCNN
from tunelab.rundir import MODEL, RESULTS, prepare_run_dir
from tunelab.strategies.anatomy import anatomy


def train(config: dict, run_dir) -> tuple[dict, dict[str, torch.Tensor]]:
    results = run_training(validate(config), prepare_run_dir(run_dir, False), progress=False)
    assert json.loads((run_dir / RESULTS).read_text())["parameters"] == results["parameters"]
    return results, load_file(run_dir / MODEL / "model.safetensors")


def numel(weights: dict[str, torch.Tensor], names) -> int:
    return sum(weights[name].numel() for name in names)


# -- BERT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "partial", "freeze": ["bert.embeddings*", "bert.encoder.layer.0*"]},
        {"name": "partial", "train_last_n_blocks": 1},
    ],
    ids=["freeze-patterns", "last-block"],
)
def test_partial_bert_keeps_frozen_weights(strategy, text_config, tiny_bert, tmp_path):
    config = text_config | {"optim": {"lr": 1e-2}, "train": text_config["train"] | {"load_best_at_end": False}}
    partial, tuned = train(config | {"strategy": strategy}, tmp_path / "partial")
    full, _ = train(config | {"train": config["train"] | {"max_steps": 1}}, tmp_path / "full")

    # The folder holds a bare BertModel (no "bert." prefix); both rules freeze embeddings + layer 0.
    initial = {f"bert.{name}": value for name, value in load_file(tiny_bert / "model.safetensors").items()}
    frozen = [n for n in tuned if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    trained = [n for n in tuned if n not in frozen]
    assert len(frozen) == 21 and any("word_embeddings" in n for n in frozen)
    for name in frozen:
        assert torch.equal(tuned[name], initial[name]), f"{name} is frozen but changed"
    for name in trained:
        # Key biases get an exactly-zero gradient (softmax ignores a shift shared by every key), so
        # they may not move; every other trainable weight must. The classifier is new: no original.
        if name in initial and not name.endswith("attention.self.key.bias"):
            assert not torch.equal(tuned[name], initial[name]), f"{name} is trainable but did not change"
    assert {"classifier.weight", "bert.pooler.dense.weight", "bert.encoder.layer.1.output.dense.weight"} <= set(trained)

    assert partial["parameters"]["total"] == full["parameters"]["total"] == numel(tuned, tuned)
    assert full["parameters"]["trainable"] == full["parameters"]["total"]
    assert partial["parameters"]["trainable"] == numel(tuned, trained) < full["parameters"]["trainable"]


# -- CNN ----------------------------------------------------------------------------------------


@pytest.fixture
def cnn_folder(tmp_path):
    """A saved digits CNN whose batch-norm statistics look pretrained (not the 0/1 defaults)."""
    from tunelab.models.loading import LoadedModel
    from tunelab.models.saving import save_model

    torch.manual_seed(0)
    init_kwargs = {"num_labels": 10, "in_channels": 1}
    model = DemoCNN(**init_kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(100)
    loaded = LoadedModel(model, "module", "cnn", init_kwargs=init_kwargs)
    labels = LabelMap(tuple(str(digit) for digit in range(10)))
    return save_model(loaded, model, tmp_path / "pretrained-cnn", labels, "image-classification")


def cnn_config(source) -> dict:
    return {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": str(source)},
        "data": {"train": "digits", "digits_train_per_class": 8, "digits_validation_per_class": 4},
        "optim": {"lr": 1e-2},
        "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 64, "load_best_at_end": False},
        "evaluate": {"base": False},
    }


def test_partial_cnn_last_block_with_frozen_norm_statistics(cnn_folder, tmp_path):
    initial = load_file(cnn_folder / "model.safetensors")
    config = cnn_config(cnn_folder)
    strategy = {"name": "partial", "train_last_n_blocks": 1, "freeze_norm_stats": True}
    partial, tuned = train(config | {"strategy": strategy}, tmp_path / "partial")
    full, full_weights = train(config | {"train": config["train"] | {"max_steps": 2}}, tmp_path / "full")

    model = DemoCNN(num_labels=10, in_channels=1)
    last_block = anatomy(model).blocks[-1] + "."
    statistics = [name for name, _ in model.named_buffers()]
    parameters = [name for name, _ in model.named_parameters()]
    first_trained = next(i for i, name in enumerate(parameters) if name.startswith(last_block))
    frozen, trained = parameters[:first_trained], parameters[first_trained:]
    assert any(name.endswith("running_mean") for name in statistics), "the demo CNN should have batch norm"
    assert frozen and trained and any(name.startswith("head.") for name in trained)
    for name in frozen + statistics:
        assert torch.equal(tuned[name], initial[name]), f"{name} changed"
    for name in trained:
        assert not torch.equal(tuned[name], initial[name]), f"{name} is trainable but did not change"
    # The control: a full run (norm layers in training mode) does move the statistics.
    running_mean = next(name for name in statistics if name.endswith("running_mean"))
    assert not torch.equal(full_weights[running_mean], initial[running_mean])

    assert partial["parameters"]["trainable"] == numel(tuned, trained) < full["parameters"]["trainable"]
    assert full["parameters"]["trainable"] == full["parameters"]["total"] == partial["parameters"]["total"]


# -- anatomy ------------------------------------------------------------------------------------


def test_anatomy_of_bert(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    parts = anatomy(model)
    assert parts.blocks == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert parts.head == ["classifier"]
    assert parts.block_of("bert.encoder.layer.1.output.dense.weight") == 1
    assert parts.block_of("bert.embeddings.word_embeddings.weight") is None
    assert parts.in_head("classifier.bias") and not parts.in_head("bert.pooler.dense.weight")


def test_anatomy_of_the_cnn():
    parts = anatomy(DemoCNN(num_labels=4, in_channels=1))
    assert parts.blocks == ["blocks.0", "blocks.1", "blocks.2"]
    assert parts.head == ["head"]
    assert parts.block_of("blocks.2.0.weight") == 2
    assert parts.in_head("head.weight") and not parts.in_head("blocks.0.0.weight")
