"""`tunelab quantize`: int8 models saved with safetensors, reloaded exactly, measured beside the float."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from torch import nn

from tunelab.cli import main
from tunelab.compress.qstate import load_into, to_tensors
from tunelab.compress.quantize import quantized
from tunelab.models.cnn import DemoCNN

CNN_RUN = {
    "task": "image-classification",
    "seed": 0,
    "model": {"source": "cnn"},
    "data": {"train": "digits", "digits_classes": [0, 1, 2], "digits_validation_per_class": 10},
    "optim": {"lr": 3e-3},
    "train": {"epochs": 3, "batch_size": 16, "checkpoint_every": None},
}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    (folder / "run.yaml").write_text(yaml.safe_dump(CNN_RUN))
    assert main(["train", str(folder / "run.yaml"), "-o", str(folder / "run"), "-q"]) == 0
    return folder / "run"


def test_int8_state_survives_safetensors_exactly():
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    cnn = DemoCNN(5, 1).eval()
    images = torch.randn(4, 1, 8, 8)
    calibration = [{"pixel_values": torch.randn(16, 1, 8, 8)} for _ in range(4)]
    static = quantized(cnn, "static", {"pixel_values": images}, calibration)
    linear = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    dynamic = quantized(linear, "dynamic")
    for model, fresh, inputs, name in (
        (static, quantized(DemoCNN(5, 1).eval(), "static", {"pixel_values": images}), {"pixel_values": images}, "s"),
        (dynamic, quantized(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)), "dynamic"), None, "d"),
    ):
        import tempfile

        path = f"{tempfile.mkdtemp()}/{name}.safetensors"
        save_file(to_tensors(model.state_dict()), path)
        restored = load_into(fresh, load_file(path))
        x = torch.randn(5, 32)
        out, back = (model(**inputs), restored(**inputs)) if inputs else (model(x), restored(x))
        assert torch.equal(out, back), name
    assert (static(pixel_values=images) - cnn(images)).abs().max() < 0.1  # int8 stays close to float


def test_static_quantization_of_the_cnn_is_measured_and_reloads(cnn_run, tmp_path, capsys):
    output = tmp_path / "int8"
    assert main(["quantize", str(cnn_run), "--method", "static", "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "float → int8 (static" in out and "weights on disk" in out and "test accuracy" in out
    results = json.loads((output / "results.json").read_text())
    found = results["compression"]
    assert found["int8"]["size_mb"] < found["float"]["size_mb"] / 2.5
    for side in ("float", "int8"):
        assert {"batch_1_ms", "batch_32_ms", "rows_per_second", "threads", "parameters"} <= set(found[side])
        assert found[side]["validation"]["examples"] == 30
    assert abs(found["int8"]["test"]["accuracy"] - found["float"]["test"]["accuracy"]) < 0.05
    # A run directory like any other: eval reloads the int8 model and scores what quantize scored.
    assert main(["eval", str(output), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test"]["accuracy"] == pytest.approx(found["int8"]["test"]["accuracy"])
    image = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(image)
    assert main(["predict", str(output), "--input", str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in {"0", "1", "2"}


def test_dynamic_quantization_of_a_text_model(tmp_path, capsys, text_config):
    text_config["train"] |= {"epochs": 1, "checkpoint_every": None}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(text_config))
    assert main(["train", str(tmp_path / "run.yaml"), "-o", str(tmp_path / "run"), "-q"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "run"), "-o", str(tmp_path / "int8"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["compression"]
    assert found["method"] == "dynamic" and found["int8"]["size_mb"] < found["float"]["size_mb"]
    assert main(["predict", str(tmp_path / "int8"), "--text", "a great movie", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in {"pos", "neg"}
    assert main(["quantize", str(tmp_path / "run"), "--method", "static", "-o", str(tmp_path / "s")]) == 2
    assert "cannot be traced for static quantization" in capsys.readouterr().err


def test_an_int8_run_whose_float_run_is_gone_says_so(cnn_run, tmp_path, capsys):
    source = shutil.copytree(cnn_run, tmp_path / "float")
    assert main(["quantize", str(source), "--method", "dynamic", "-o", str(tmp_path / "int8"), "--json"]) == 0
    capsys.readouterr()
    shutil.rmtree(source)
    assert main(["eval", str(tmp_path / "int8")]) == 2
    err = capsys.readouterr().err.strip()
    assert "its float model" in err and "is gone" in err and len(err.splitlines()) == 1


def test_quantization_aware_training_saves_an_int8_model_that_reloads(tmp_path, capsys):
    config = CNN_RUN | {"train": CNN_RUN["train"] | {"quantization_aware": True, "load_best_at_end": False}}
    (tmp_path / "qat.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "qat.yaml"), "-o", str(tmp_path / "qat"), "--json"]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "qat" / "results.json").read_text())
    int8, fake = results["quantization_aware"]["int8"], results["quantization_aware"]["fake_quantized"]
    assert fake["validation"]["accuracy"] > 0.9  # it learned: comparing models at chance would mean little
    # Before training it is the float model: scored as the same run without fake quantization.
    (tmp_path / "float.yaml").write_text(yaml.safe_dump(CNN_RUN | {"train": CNN_RUN["train"] | {"max_steps": 1}}))
    assert main(["train", str(tmp_path / "float.yaml"), "-o", str(tmp_path / "float"), "-q"]) == 0
    capsys.readouterr()
    float_base = json.loads((tmp_path / "float" / "results.json").read_text())["base"]
    assert results["base"]["validation"]["accuracy"] == pytest.approx(float_base["validation"]["accuracy"])
    assert results["final"]["validation"] == int8["validation"]  # the run's scores are the saved int8 model's
    assert abs(int8["validation"]["accuracy"] - fake["validation"]["accuracy"]) < 0.05
    assert (tmp_path / "qat" / "model" / "quantized.safetensors").exists()
    assert main(["eval", str(tmp_path / "qat"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["validation"]["accuracy"] == pytest.approx(int8["validation"]["accuracy"])


def test_evaluating_a_quantization_aware_model_leaves_its_observers_alone(tmp_path):
    """Observers keep observing in eval mode: scoring validation rows must not calibrate them."""
    from tunelab.compress.quantize import aware
    from tunelab.evaluate import collect_logits

    class Gatherer:
        def gather_for_metrics(self, pair):
            return pair

    model = aware(torch.nn.Sequential(torch.nn.Linear(4, 3)), {"input": torch.randn(2, 4)})
    model(torch.randn(8, 4))  # training calibrates the observers on its own rows
    observed = {name: value.clone() for name, value in model.state_dict().items() if name.endswith("_val")}
    forward = model.forward
    model.forward = lambda **batch: forward(batch["input"])
    collect_logits(model, [{"input": torch.randn(8, 4) * 100, "labels": torch.zeros(8, dtype=torch.long)}], Gatherer())
    assert observed and all(torch.equal(observed[name], model.state_dict()[name]) for name in observed)
    model.train()
    forward(torch.randn(8, 4) * 100)  # and training still observes
    assert any(not torch.equal(observed[name], model.state_dict()[name]) for name in observed)


def test_quantization_aware_training_names_what_it_needs(tmp_path, capsys):
    config = CNN_RUN | {"train": CNN_RUN["train"] | {"quantization_aware": True}}
    (tmp_path / "qat.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "qat.yaml"), "-o", str(tmp_path / "qat")]) == 2
    assert "train.quantization_aware: set train.load_best_at_end: false" in capsys.readouterr().err
