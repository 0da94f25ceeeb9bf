"""Image folders: the built-in CNN and a tiny Hugging Face ViT train on PNGs written from the
scikit-learn digits, the saved ViT reloads with plain transformers, and predict reads images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from tunelab.cli import main

CLASSES = {"zero": 0, "one": 1, "seven": 7}
PER_CLASS = 16


def digit_png(pixels: np.ndarray, path: Path) -> Path:
    """An 8x8 digit (0..16) as a 16x16 RGB PNG."""
    gray = (pixels * (255 / 16)).astype(np.uint8)
    Image.fromarray(gray).resize((16, 16), Image.NEAREST).convert("RGB").save(path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digit-images")
    digits = load_digits()
    for name, digit in CLASSES.items():
        (root / "train" / name).mkdir(parents=True)
        (root / "query").mkdir(exist_ok=True)
        indices = np.flatnonzero(digits.target == digit)
        for index in indices[:PER_CLASS]:
            digit_png(digits.images[index], root / "train" / name / f"{index}.png")
        digit_png(digits.images[indices[-1]], root / "query" / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide ViT for 16x16 images, with its image processor, as a local HF folder."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def train(image_folder: Path, source: str, folder: Path, **data) -> Path:
    config = {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": source},
        "data": {"train": str(image_folder / "train"), "validation_fraction": 0.25, **data},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 3, "batch_size": 12, "eval_batch_size": 64, "log_every": 2},
    }
    config_file = folder / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(config_file), "--output", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def cnn_run(image_folder, tmp_path_factory) -> Path:
    return train(image_folder, "cnn", tmp_path_factory.mktemp("cnn-run"), image_size=16)


@pytest.fixture(scope="module")
def vit_run(image_folder, tiny_vit, tmp_path_factory) -> Path:
    return train(image_folder, str(tiny_vit), tmp_path_factory.mktemp("vit-run"))


def predict(capsys, run_dir: Path, target: Path) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--input", str(target), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cnn_trains_on_an_image_folder(cnn_run):
    results = json.loads((cnn_run / "results.json").read_text(encoding="utf-8"))
    assert results["labels"] == ["one", "seven", "zero"]
    assert results["examples"] == {"train": 36, "validation": 12}
    assert results["steps"] == 9
    assert results["final"]["validation"]["examples"] == 12
    meta = json.loads((cnn_run / "model" / "tunelab.json").read_text(encoding="utf-8"))
    assert meta["preprocessing"]["image_size"] == 16
    assert meta["init_kwargs"] == {"num_labels": 3, "in_channels": 3}


def test_cnn_predicts_a_folder_and_a_single_image(cnn_run, image_folder, capsys):
    rows = predict(capsys, cnn_run, image_folder / "query")
    assert [Path(row["input"]).name for row in rows] == ["one.png", "seven.png", "zero.png"]
    assert all(row["label"] in CLASSES and 0 < row["probability"] <= 1 for row in rows)

    single = predict(capsys, cnn_run, image_folder / "query" / "seven.png")
    # Alone or in a batch, the same answer; the last bits may differ (batch size changes the kernels).
    assert [(row["input"], row["label"]) for row in single] == [(rows[1]["input"], rows[1]["label"])]
    assert single[0]["probability"] == pytest.approx(rows[1]["probability"], abs=1e-6)


def test_tiny_vit_trains_and_reloads_with_plain_transformers(vit_run, image_folder, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    results = json.loads((vit_run / "results.json").read_text(encoding="utf-8"))
    assert results["examples"] == {"train": 36, "validation": 12}
    assert any(name.startswith("classifier") for name in results["fresh_head"])

    model = AutoModelForImageClassification.from_pretrained(vit_run / "model").eval()
    assert model.config.id2label == {0: "one", 1: "seven", 2: "zero"}
    processor = AutoImageProcessor.from_pretrained(vit_run / "model")
    queries = sorted((image_folder / "query").glob("*.png"))
    with torch.no_grad():
        pixels = processor(images=[Image.open(path).convert("RGB") for path in queries], return_tensors="pt")
        probabilities = torch.softmax(model(**pixels).logits, dim=-1)

    rows = predict(capsys, vit_run, image_folder / "query")
    assert [Path(row["input"]) for row in rows] == queries
    assert [row["label"] for row in rows] == [model.config.id2label[i] for i in probabilities.argmax(-1).tolist()]
    assert [row["probability"] for row in rows] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-5)


def test_eval_reproduces_the_vit_runs_validation_metrics(vit_run, capsys):
    final = json.loads((vit_run / "results.json").read_text(encoding="utf-8"))["final"]
    capsys.readouterr()
    assert main(["eval", str(vit_run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["validation"]["accuracy"] == pytest.approx(final["validation"]["accuracy"])
    assert metrics["validation"]["loss"] == pytest.approx(final["validation"]["loss"], abs=1e-5)


def test_eval_on_another_image_folder(cnn_run, image_folder, capsys):
    capsys.readouterr()
    assert main(["eval", str(cnn_run), "--data", str(image_folder / "train"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["data"]["examples"] == 3 * PER_CLASS
    assert [sum(row) for row in metrics["data"]["confusion_matrix"]] == [PER_CLASS] * 3


def test_an_undecodable_image_is_one_clear_error(cnn_run, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png at all" * 4)
    capsys.readouterr()
    assert main(["predict", str(cnn_run), "--input", str(broken)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert str(broken) in lines[0] and "--input" in lines[0]
    assert captured.out == ""


def test_an_undecodable_image_in_training_data_names_the_file(image_folder, tmp_path, capsys, copy_tree):
    data = copy_tree(image_folder / "train", tmp_path / "train")
    broken = data / "one" / "garbage.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # a PNG signature, then nonsense
    config = {
        "task": "image-classification",
        "model": {"source": "cnn"},
        "data": {"train": str(data), "image_size": 16},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    capsys.readouterr()
    assert main(["train", str(config_file), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "data.train" in lines[0]


def bomb_png(path: Path, side: int = 30_000) -> Path:
    """A PNG whose header declares side x side pixels (900 MP): Pillow sizes an image from it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    pixels = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_by_name_before_it_is_decoded(image_folder, tmp_path, capsys, copy_tree):
    data = copy_tree(image_folder / "train", tmp_path / "train")
    bomb = bomb_png(data / "one" / "bomb.png")
    data_section = {"train": str(data), "image_size": 16}
    config = {"task": "image-classification", "model": {"source": "cnn"}, "data": data_section}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    capsys.readouterr()
    assert main(["train", str(config_file), "-o", str(tmp_path / "run"), "-q"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"data.train: {bomb} declares more than" in line and "decompression bomb" in line
    assert not (tmp_path / "run").exists()


def test_predict_refuses_a_decompression_bomb_by_name(cnn_run, tmp_path, capsys):
    bomb = bomb_png(tmp_path / "bomb.png")
    capsys.readouterr()
    assert main(["predict", str(cnn_run), "--input", str(bomb)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"--input: {bomb} declares more than" in line
