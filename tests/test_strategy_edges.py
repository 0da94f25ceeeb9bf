"""Edge cases found in review: multi-layer heads under PEFT, adapter runs on bases without weights
on disk, planted model folders, and options that do not apply to a strategy."""

from __future__ import annotations

import json
import shutil

import pytest

from tunelab.builder import run_training
from tunelab.cli import main
from tunelab.config import validate
from tunelab.errors import UserError
from tunelab.recipes.compare import strategy_config
from tunelab.rundir import MODEL, prepare_run_dir


@pytest.fixture(scope="module")
def tiny_roberta(tiny_bert, tmp_path_factory):
    """A RoBERTa: its classification head has two layers (dense, out_proj)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from conftest import save_tiny_encoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    folder = tmp_path_factory.mktemp("tiny-roberta")
    settings = {"max_position_embeddings": 130, "pad_token_id": tokenizer.pad_token_id}  # RoBERTa counts from 2
    return save_tiny_encoder(folder, RobertaModel, RobertaConfig, tokenizer, **settings)


@pytest.mark.parametrize("strategy", ["lora", "ia3"])
def test_a_two_layer_head_trains_under_peft(strategy, tiny_roberta, text_config):
    from test_strategies_efficient import assert_exactly, claimed_and_changed

    config = text_config | {"model": {"source": str(tiny_roberta)}}
    claimed, changed, _ = claimed_and_changed(config, {"name": strategy})
    head = {name for name in claimed if "classifier.modules_to_save.default." in name}
    assert len(head) == 4  # dense and out_proj, weight and bias: the copy the forward pass uses
    assert_exactly(claimed, changed)


@pytest.mark.parametrize("strategy", ["lora", "adapter"])
def test_an_adapter_on_a_random_base_reloads_to_the_same_numbers(strategy, tmp_path, capsys):
    """The built-in `cnn` has no weights on disk, and its batch norms move while an adapter trains:
    both are saved beside the adapter."""
    config = {
        "task": "image-classification",
        "seed": 3,
        "model": {"source": "cnn"},
        "data": {"train": "digits", "digits_classes": [0, 1, 2], "digits_train_per_class": 10},
        "strategy": {"name": strategy},
        "optim": {"lr": 1e-2},
        "train": {"epochs": 2, "batch_size": 10},
    }
    results = run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    assert (tmp_path / "run" / MODEL / "base_state.safetensors").exists()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["validation"]["loss"] == pytest.approx(results["final"]["validation"]["loss"], abs=1e-6)


def test_a_planted_model_folder_cannot_call_code_with_its_own_arguments(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    meta = {"kind": "module", "source": "os:system", "init_kwargs": {"command": "touch pwned"}, "labels": ["a", "b"]}
    (folder / "tunelab.json").write_text(json.dumps(meta | {"task": "image-classification"}))
    (tmp_path / "config.yaml").write_text("data: {train: digits}\ntask: image-classification\n")
    code = main(["predict", str(tmp_path), "--input", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "init_kwargs may only hold integer" in err and "\n" not in err
    assert not (tmp_path / "pwned").exists() and not (folder.parent.parent / "pwned").exists()


def test_an_adapter_run_as_a_source_says_to_export_it_first(text_config, tmp_path, capsys):
    run_training(
        validate(text_config | {"strategy": {"name": "lora"}}), prepare_run_dir(tmp_path / "run", False), progress=False
    )
    with pytest.raises(UserError, match="holds an adapter only; write a full model with `tunelab export"):
        run_training(
            validate(text_config | {"model": {"source": str(tmp_path / "run" / MODEL)}}),
            prepare_run_dir(tmp_path / "next", False),
            progress=False,
        )


def test_a_damaged_pooling_config_is_one_line(tiny_bert, text_config, tmp_path):
    folder = shutil.copytree(tiny_bert, tmp_path / "st")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"1_Pooling/config.json: damaged \(not valid JSON\)"):
        run_training(
            validate(text_config | {"model": {"source": str(folder)}}),
            prepare_run_dir(tmp_path / "run", False),
            progress=False,
        )


def test_virtual_tokens_on_a_sentence_model_use_transformers_head(tiny_bert, text_config, tmp_path):
    folder = shutil.copytree(tiny_bert, tmp_path / "st")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    config = text_config | {"model": {"source": str(folder)}, "strategy": {"name": "prompt"}}
    run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    assert "pooling" not in json.loads((tmp_path / "run" / MODEL / "tunelab.json").read_text())
    forced = config | {"model": {"source": str(folder), "pooling": "mean"}}
    with pytest.raises(UserError, match="virtual tokens need transformers' own classification head"):
        run_training(validate(forced), prepare_run_dir(tmp_path / "forced", False), progress=False)


def test_per_layer_rates_are_refused_for_peft_methods_and_dropped_by_compare(text_config):
    with pytest.raises(UserError, match="strategy: head_lr applies to full, .* not lora"):
        validate(text_config | {"strategy": {"name": "lora", "head_lr": 0.1}})
    config = validate(
        text_config
        | {"strategy": {"head_lr": 0.1, "lora": {"r": 12}}, "compare": {"options": {"lora": {"lora": {"alpha": 4}}}}}
    )
    lora = strategy_config(config, "lora").strategy
    assert lora.head_lr is None and (lora.lora.r, lora.lora.alpha) == (12, 4)  # options merge, not replace
    assert strategy_config(config, "full").strategy.head_lr == 0.1
