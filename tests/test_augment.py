"""Training-time image augmentation: what it changes (train, each epoch), what it never touches
(validation, test, the train/validation gap), reproducibility under a seed and across a resume,
the configs it refuses, and what the run records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab.builder import run_training
from tunelab.cli import main
from tunelab.config import AugmentConfig, validate
from tunelab.data import prepare_data, read_data
from tunelab.data.augment import AugmentedImages
from tunelab.data.images import SimpleImageTransform, load_images
from tunelab.data.labels import LabelMap
from tunelab.errors import UserError
from tunelab.models import load_model
from tunelab.rundir import CHECKPOINTS, MODEL, RESULTS, prepare_run_dir

SIZE = 16  # images are written at the model's input size, so the transform's resize changes nothing
CLASSES = ("red", "green", "blue")
PER_CLASS = 8


def noise_image(rng: np.random.Generator, tint: int) -> Image.Image:
    """Random RGB noise (no symmetry, so a mirror differs), one channel brightened by class."""
    pixels = rng.integers(0, 160, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[..., tint] += 90
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("augment-images")
    rng = np.random.default_rng(0)
    for role, count in (("train", PER_CLASS), ("test", 2)):
        for tint, name in enumerate(CLASSES):
            (root / role / name).mkdir(parents=True)
            for index in range(count):
                noise_image(rng, tint).save(root / role / name / f"{index}.png")
    return root


def image_config(image_folder: Path, **augment) -> dict:
    return {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": "cnn"},
        "data": {
            "train": str(image_folder / "train"),
            "test": str(image_folder / "test"),
            "validation_fraction": 0.25,
            "image_size": SIZE,
            "augment": augment,
        },
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 6, "log_every": 1, "checkpoint_every": None},
    }


def prepared(image_folder: Path, **augment):
    config = validate(image_config(image_folder, **augment))
    raw = read_data(config)
    return prepare_data(raw, load_model(config, raw.labels, raw.channels), config).datasets


def pixels(dataset, epoch: int | None = None) -> torch.Tensor:
    if epoch is not None:
        dataset.set_epoch(epoch)
    return torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])


def train_images(image_folder: Path, **settings) -> tuple[AugmentedImages, torch.Tensor]:
    """Train's images augmented as ``settings`` ask, and the same images un-augmented."""
    files = sorted((image_folder / "train").rglob("*.png"))
    labels = [0] * len(files)
    transform = SimpleImageTransform(SIZE)
    dataset = AugmentedImages.load(files, labels, transform, AugmentConfig(**settings), seed=0, role="train")
    return dataset, load_images(files, labels, transform, "train").pixel_values


def test_train_changes_each_epoch_while_validation_and_test_stay_as_without_augmentation(image_folder):
    plain = prepared(image_folder)
    augmented = prepared(image_folder, horizontal_flip=True, random_crop=0.5, color_jitter=0.3)
    assert isinstance(augmented["train"], AugmentedImages)
    assert not isinstance(plain["train"], AugmentedImages)  # the fast path when augmentation is off

    first, second = pixels(augmented["train"], 0), pixels(augmented["train"], 1)
    assert first.shape == plain["train"].pixel_values.shape
    assert not torch.equal(first, plain["train"].pixel_values)
    assert not torch.equal(first, second)
    assert torch.equal(pixels(augmented["train"], 0), first)  # an epoch's draws depend on (seed, epoch, index)
    for role in ("validation", "test"):
        assert torch.equal(augmented[role].pixel_values, plain[role].pixel_values)
    # The train/validation gap scores train as the model sees validation: un-augmented.
    assert torch.equal(pixels(augmented["train"].without_augmentation()), plain["train"].pixel_values)


def test_the_same_seed_gives_the_same_augmented_tensors(image_folder):
    settings = {"horizontal_flip": True, "random_crop": 0.3, "color_jitter": 0.4}
    one, _ = train_images(image_folder, **settings)
    two, _ = train_images(image_folder, **settings)
    for epoch in (0, 3):
        assert torch.equal(pixels(one, epoch), pixels(two, epoch))
    two.seed = 1
    assert not torch.equal(pixels(one, 3), pixels(two, 3))


def test_horizontal_flip_gives_the_image_or_its_mirror_and_both_happen(image_folder):
    dataset, plain = train_images(image_folder, horizontal_flip=True)
    outcomes = set()
    for epoch in range(4):
        for index, tensor in enumerate(pixels(dataset, epoch)):
            if torch.equal(tensor, plain[index]):
                outcomes.add("same")
            else:
                assert torch.equal(tensor, plain[index].flip(-1))
                outcomes.add("mirrored")
    assert outcomes == {"same", "mirrored"}


def test_random_crop_keeps_the_shape_and_changes_the_content(image_folder):
    dataset, plain = train_images(image_folder, random_crop=0.25)
    cropped = pixels(dataset, 0)
    assert cropped.shape == plain.shape
    assert sum(not torch.equal(a, b) for a, b in zip(cropped, plain, strict=True)) > len(plain) // 2


def test_nothing_on_gives_exactly_the_unaugmented_tensors(image_folder):
    dataset, plain = train_images(image_folder, color_jitter=0.0)
    assert torch.equal(pixels(dataset, 5), plain)


@pytest.mark.parametrize(
    ("task", "train", "names"),
    [("image-classification", "digits", "built-in digits"), ("text-classification", "x.csv", "text-classification")],
    ids=["digits", "text"],
)
def test_augmentation_is_refused_where_there_are_no_image_files(task, train, names):
    with pytest.raises(UserError) as caught:
        validate({"task": task, "data": {"train": train, "augment": {"horizontal_flip": True}}})
    message = str(caught.value)
    assert "data.augment" in message and names in message and "\n" not in message
    validate({"task": task, "data": {"train": train, "augment": {"color_jitter": 0.0}}})  # nothing on: fine


def test_augment_values_are_checked():
    for bad in ({"random_crop": 0.0}, {"random_crop": 1.5}, {"color_jitter": -0.1}, {"flip": True}):
        with pytest.raises(UserError, match="data.augment"):
            validate({"task": "image-classification", "data": {"train": "folder", "augment": bad}})


def test_image_size_with_a_models_own_image_processor_is_refused(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path / "tiny-vit"
    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    run = {"task": "image-classification", "model": {"source": str(folder)}, "data": {"train": "x"}}
    labels = LabelMap(("a", "b"))
    assert load_model(validate(run), labels).image_processor is not None
    run["data"]["image_size"] = 32
    with pytest.raises(UserError, match="^data.image_size: this model's image processor sets the input size"):
        load_model(validate(run), labels)


def test_a_run_with_augmentation_completes_and_records_it(image_folder, tmp_path, write_config, monkeypatch):
    epochs = set()  # those the augmenting train set was moved to (loaders also call the un-augmented copy's)
    set_epoch = AugmentedImages.set_epoch
    monkeypatch.setattr(
        AugmentedImages, "set_epoch", lambda self, n: (self.settings.enabled and epochs.add(n), set_epoch(self, n))
    )
    config_file = write_config(image_config(image_folder, horizontal_flip=True, random_crop=0.6, color_jitter=0.2))
    assert main(["train", str(config_file), "--output", str(tmp_path / "run"), "--quiet"]) == 0
    assert epochs == {0, 1}  # each epoch draws afresh
    results = json.loads((tmp_path / "run" / RESULTS).read_text(encoding="utf-8"))
    assert results["preparation"]["train"]["augment"] == {
        "horizontal_flip": True,
        "random_crop": 0.6,
        "color_jitter": 0.2,
    }
    assert results["examples"] == {"train": 18, "validation": 6, "test": 6}
    assert results["steps"] == 6
    assert set(results["final"]) == {"train", "validation", "test"}


def test_a_run_resumed_mid_epoch_ends_with_the_same_weights(image_folder, tmp_path, capsys):
    """Augmentation draws must not depend on when the loader fetches a batch: the resumed loader
    fetches one ahead before the checkpoint's random state is put back."""
    config = image_config(image_folder, horizontal_flip=True, random_crop=0.5, color_jitter=0.3)
    config["train"] |= {"epochs": 3, "checkpoint_every": 1, "keep_checkpoints": 20}  # 3 steps an epoch
    finished = tmp_path / "finished"
    run_training(validate(config), prepare_run_dir(finished, False), progress=False)

    interrupted = shutil.copytree(finished, tmp_path / "interrupted")
    for name in (RESULTS, "report.html"):
        (interrupted / name).unlink()
    shutil.rmtree(interrupted / MODEL)
    for folder in (interrupted / CHECKPOINTS).glob("step-*"):
        if folder.name > "step-000004":  # step 4 is one step into the second epoch
            shutil.rmtree(folder)
    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted), "-q"]) == 0
    assert "resuming from step-000004" in capsys.readouterr().err

    weights = "model/model.safetensors"
    assert (interrupted / weights).read_bytes() == (finished / weights).read_bytes()
    assert (interrupted / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()
