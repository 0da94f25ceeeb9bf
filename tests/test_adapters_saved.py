"""What parameter-efficient runs save: PEFT's own format, loadable without tunelab; merged exports
that need no PEFT; bottleneck adapters that tunelab reloads; one clear line where merging cannot be."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.builder import run_training
from tunelab.cli import main
from tunelab.config import validate
from tunelab.io import folder_megabytes
from tunelab.recipes.predict import run_prediction
from tunelab.rundir import MODEL, RESULTS, prepare_run_dir

TEXTS = ["the movie was great", "an awful boring plot", "quite lovely acting", "sad and dull story"]


def train(text_config: dict, strategy: dict, run_dir):
    config = text_config | {"strategy": strategy, "optim": {"lr": 2e-2}}
    run_training(validate(config), prepare_run_dir(run_dir, False), progress=False)
    return run_dir


def logits_of(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, sentiment_files):
    from conftest import make_text_config

    run_dir = tmp_path_factory.mktemp("lora") / "run"
    return train(make_text_config(tiny_bert, sentiment_files), {"name": "lora", "lora": {"r": 4}}, run_dir)


def test_a_lora_adapter_loads_with_plain_peft_and_predicts_the_same(lora_run, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = lora_run / MODEL
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    assert not (folder / "model.safetensors").exists()  # the adapter alone
    assert folder_megabytes(folder) < 0.2 * folder_megabytes(tiny_bert)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plain = PeftModel.from_pretrained(base, folder)
    peft_logits = logits_of(plain, tokenizer)

    rows = run_prediction(lora_run, None, TEXTS)
    labels = json.loads((folder / "label_map.json").read_text())["id2label"]
    probabilities = torch.softmax(peft_logits, dim=-1)
    assert [row["label"] for row in rows] == [labels[str(i)] for i in probabilities.argmax(-1).tolist()]
    torch.testing.assert_close(torch.tensor([row["probability"] for row in rows]), probabilities.max(-1).values)
    with plain.disable_adapter():  # the LoRA weights matter, so agreement is not trivial
        without_lora = logits_of(plain, tokenizer)
    assert (without_lora - peft_logits).abs().max() > 1e-3


def test_the_merged_export_predicts_the_same_without_peft(lora_run, tiny_bert, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert main(["export", str(lora_run), "--merge", "-o", str(tmp_path / "merged")]) == 0
    merged_folder = tmp_path / "merged"
    assert (merged_folder / "model.safetensors").exists() and not (merged_folder / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(merged_folder)
    merged = AutoModelForSequenceClassification.from_pretrained(merged_folder)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2), lora_run / MODEL
    )
    torch.testing.assert_close(logits_of(merged, tokenizer), logits_of(adapted, tokenizer), atol=1e-5, rtol=1e-4)
    saved_labels = json.loads((lora_run / MODEL / "label_map.json").read_text())["id2label"]
    assert merged.config.id2label == {int(k): v for k, v in saved_labels.items()} == {0: "neg", 1: "pos"}

    # Exporting again to the same place never overwrites it.
    capsys.readouterr()
    assert main(["export", str(lora_run), "--merge", "-o", str(merged_folder)]) == 2
    assert capsys.readouterr().err.strip() == f"error: export: {merged_folder} already exists; choose another --output"


def test_an_adapter_run_without_merge_says_to_add_it(lora_run, tmp_path, capsys):
    assert main(["export", str(lora_run), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: export:") and "add --merge" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_bottleneck_adapters_reload_in_tunelab_and_refuse_to_merge(text_config, tmp_path, capsys):
    run_dir = train(text_config, {"name": "adapter", "adapter": {"placement": "houlsby"}}, tmp_path / "run")
    assert (run_dir / MODEL / "adapter.safetensors").exists()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    reloaded = json.loads(capsys.readouterr().out)
    final = json.loads((run_dir / RESULTS).read_text())["final"]
    for split in ("validation", "test"):
        assert reloaded[split]["loss"] == pytest.approx(final[split]["loss"], abs=1e-5)

    assert main(["export", str(run_dir), "--merge", "-o", str(tmp_path / "merged")]) == 2
    assert "bottleneck adapters add non-linear layers" in capsys.readouterr().err


def test_prompt_tuning_cannot_merge_and_says_so(text_config, tmp_path, capsys):
    run_dir = train(text_config | {"train": text_config["train"] | {"epochs": 1}}, {"name": "prompt"}, tmp_path / "r")
    capsys.readouterr()
    assert main(["export", str(run_dir), "--merge", "-o", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: export --merge: PROMPT_TUNING cannot be merged") and "\n" not in err
