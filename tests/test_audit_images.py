"""The audit's near-duplicate images: re-encoded, resized or brightened copies are found within
a split and between train and test, byte-identical copies stay exact duplicates, and distinct
images are never flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tunelab.cli import main
from tunelab.config import validate
from tunelab.data.audit import audit
from tunelab.data.near_images import NEAR_IMAGE_DISTANCE, fingerprint, near_pairs

SIZE = 64


def pattern(seed: int) -> Image.Image:
    """A smooth random pattern: 8x8 noise enlarged, so it looks like a photo's shapes, not static."""
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((SIZE, SIZE), Image.BICUBIC)


def brighter(image: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.3)


def one_pixel_smaller(image: Image.Image) -> Image.Image:
    return image.resize((SIZE - 1, SIZE - 1), Image.BILINEAR)


def cropped(image: Image.Image) -> Image.Image:
    """A 3% border cut off, then enlarged back."""
    border = round(SIZE * 0.03)
    return image.crop((border, border, SIZE - border, SIZE - border)).resize((SIZE, SIZE), Image.BILINEAR)


def noisy(image: Image.Image) -> Image.Image:
    grain = np.random.default_rng(0).normal(0, 40, (SIZE, SIZE, 3))
    return Image.fromarray((np.asarray(image) + grain).clip(0, 255).astype(np.uint8))


# (original, copy's name, how the copy was made); a copy saved as .jpg is also re-encoded.
TRAIN_NEAR = [
    ("a/p0.png", "a/p0-bright.png", brighter),
    ("a/p1.png", "a/p1-q20.jpg", None),
    ("a/p2.png", "b/p2-smaller.png", one_pixel_smaller),
    ("b/p3.png", "b/p3-noisy.png", noisy),
    ("b/p4.png", "a/p4-cropped-q90.jpg", cropped),
]
TEST_NEAR = [
    ("a/p5.png", "a/p5-bright.png", brighter),
    ("b/p6.png", "b/p6-q75.jpg", None),
    ("a/p7.png", "b/p7-cropped.png", cropped),
]
DISTINCT_TRAIN, DISTINCT_TEST = 16, 6


def save(image: Image.Image, path: Path) -> None:
    """PNG, or JPEG at the quality the name ends with (p1-q60.jpg: 60)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.save(path, quality=int(path.stem.rsplit("-q", 1)[1]))
    else:
        image.save(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("near-images")
    planted = [("train", *pair) for pair in TRAIN_NEAR] + [("test", *pair) for pair in TEST_NEAR]
    for seed, (copy_role, original, copy, change) in enumerate(planted):
        image = pattern(seed)
        save(image, root / "train" / original)
        save(change(image) if change else image, root / copy_role / copy)
    for index in range(DISTINCT_TRAIN):
        save(pattern(100 + index), root / "train" / "ab"[index % 2] / f"distinct{index}.png")
    for index in range(DISTINCT_TEST):
        save(pattern(200 + index), root / "test" / "ab"[index % 2] / f"distinct{index}.png")
    # A byte-identical copy (an exact duplicate, not a near one) and a file that does not decode.
    (root / "train" / "b" / "distinct0-copy.png").write_bytes((root / "train" / "a" / "distinct0.png").read_bytes())
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return root


def names(pairs: list, root: Path) -> set[frozenset[str]]:
    return {frozenset(str(Path(path).relative_to(root)) for path in pair[:2]) for pair in pairs}


def planted_pairs(planted: list, copy_role: str) -> set[frozenset[str]]:
    return {frozenset((f"train/{original}", f"{copy_role}/{copy}")) for original, copy, _ in planted}


@pytest.fixture(scope="module")
def report(planted) -> dict:
    config = {"task": "image-classification", "model": {"source": "cnn"}}
    config["data"] = {"train": str(planted / "train"), "test": str(planted / "test")}
    return audit(validate(config))


def test_near_duplicates_within_train_are_found_without_false_positives(report, planted):
    found = report["splits"]["train"]["near_duplicates"]
    assert found["count"] == 5
    assert names(found["examples"], planted) == planted_pairs(TRAIN_NEAR, "train")
    assert all(1 - NEAR_IMAGE_DISTANCE / 64 <= similarity <= 1 for *_, similarity in found["examples"])
    similarities = [similarity for *_, similarity in found["examples"]]
    assert similarities == sorted(similarities, reverse=True) and similarities[-1] < 1  # not all trivial
    # The byte-identical copy is an exact duplicate only; the broken file is listed and skipped.
    assert report["splits"]["train"]["exact_duplicates"]["extra_copies"] == 1
    assert [Path(p).name for p in report["splits"]["train"]["undecodable"]] == ["broken.png"]


def test_distinct_patterns_stay_far_apart(tmp_path):
    """The margin behind NEAR_IMAGE_DISTANCE on this kind of image: no two of 60 distinct
    patterns come within twice the threshold."""
    for seed in range(60):
        save(pattern(1000 + seed), tmp_path / f"{seed}.png")
    prints = [fingerprint(path) for path in sorted(tmp_path.glob("*.png"))]
    packed = np.frombuffer(b"".join(p.perceptual for p in prints), dtype=np.uint8).reshape(-1, 8)
    hashes = np.unpackbits(packed, axis=1)
    distances = (hashes[:, None, :] != hashes[None, :, :]).sum(-1)[np.triu_indices(len(prints), 1)]
    assert distances.min() > 2 * NEAR_IMAGE_DISTANCE
    assert near_pairs(prints) == []


def test_near_leakage_from_train_into_test_is_found(report, planted):
    leak = report["leakage"]["test"]
    assert leak["exact"]["count"] == 0
    assert leak["near"]["count"] == 3
    assert names(leak["near"]["examples"], planted) == planted_pairs(TEST_NEAR, "test")
    assert all(Path(first).is_relative_to(planted / "test") for first, *_ in leak["near"]["examples"])
    assert report["splits"]["test"]["near_duplicates"]["count"] == 0
    assert "leakage: 0 test rows also in train exactly, 3 nearly" in report["warnings"]


def test_the_cli_shows_image_near_duplicates_in_the_table_json_and_page(planted, tmp_path, write_config, capsys):
    config = {"task": "image-classification", "model": {"source": "cnn"}}
    config["data"] = {"train": str(planted / "train"), "test": str(planted / "test")}
    assert main(["audit", str(write_config(config)), "-o", str(tmp_path / "audit")]) == 0
    captured = capsys.readouterr()
    train_row = next(line for line in captured.out.splitlines() if line.strip().startswith("train "))
    leak_row = next(line for line in captured.out.splitlines() if "test ∩ train" in line)
    assert train_row.split()[-3:] == ["5", "–", "1"]  # near-dup pairs, too long (text only), bad images
    assert leak_row.split()[-2:] == ["0", "3"]  # exact, near
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["leakage"]["test"]["near"]["count"] == 3
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert "<td>test</td><td>0</td><td>3</td>" in page and "3 nearly" in page
