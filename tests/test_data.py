"""Data: the four table readers, label maps, held-out validation, caps, truncation, text pairs
and dynamic padding. Runs that train use the tiny BERT from conftest for one short epoch."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoTokenizer

from tunelab.cli import main
from tunelab.config import validate
from tunelab.data import read_data
from tunelab.data.labels import LabelMap
from tunelab.data.readers import table_split
from tunelab.data.text import tokenize
from tunelab.models import load_saved_model
from tunelab.tasks import get_task

# Every word is one word piece in the MiniLM vocabulary, so a text of n words is n + 2 tokens.
WORDS = {
    "2": ["good", "great", "happy", "fine"],
    "9": ["bad", "awful", "sad", "poor"],
    "10": ["table", "chair", "door", "window"],
}
FILLER = ["the", "movie", "was", "a", "plot", "and", "story", "really"]
MAX_LENGTH = 16


def word_rows(count: int, seed: int, long_every: int = 0) -> pd.DataFrame:
    """Three classes named by numbers; every ``long_every``-th row is far past MAX_LENGTH."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(count):
        label = list(WORDS)[index % 3]
        length = 30 if long_every and index % long_every == 0 else 4
        words = [rng.choice(FILLER) for _ in range(length)] + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels})


def text_run_config(model: Path, train: Path, **data) -> dict:
    return {
        "task": "text-classification",
        "seed": 0,
        "model": {"source": str(model)},
        "data": {"train": str(train), "max_length": MAX_LENGTH, **data},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "log_every": 1},
        "evaluate": {"base": False},
    }


def train_run(config: dict, folder: Path) -> Path:
    config_file = folder / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(config_file), "--output", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


# ---------------------------------------------------------------------------------- readers


READ_BACK = pd.DataFrame(
    {
        "text": ["plain words", "a comma, inside", "l'été était beau", "007", "  padded  ", "tab\u00a0nbsp"],
        "label": ["pos", "neg", "pos", "neg", "pos", "neg"],
        "stars": [10, 9, 2, 10, 9, 2],
    }
)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("label_column", ["label", "stars"])
def test_every_table_format_reads_the_same_examples(tmp_path, label_column):
    splits = {
        suffix: table_split(write_table(READ_BACK, tmp_path / f"data{suffix}"), "train", "text", label_column)
        for suffix in (".csv", ".tsv", ".jsonl", ".parquet")
    }
    expected_labels = [str(value) for value in READ_BACK[label_column]]
    for suffix, split in splits.items():
        assert split.inputs == list(READ_BACK["text"]), suffix
        assert split.labels == expected_labels, suffix


def test_string_labels_map_to_ids_in_sorted_order():
    labels = LabelMap.from_labels(["pos", "neg", "neutral", "neg"])
    assert labels.names == ("neg", "neutral", "pos")
    assert labels.encode(["pos", "neg"], "train") == [2, 0]


def test_numeric_labels_sort_numerically():
    labels = LabelMap.from_labels(["9", "10", "2", "10", "-1"])
    assert labels.names == ("-1", "2", "9", "10")
    assert labels.label2id == {"-1": 0, "2": 1, "9": 2, "10": 3}


# ------------------------------------------------------------------ validation and train caps


def imbalanced_config(tmp_path: Path, **data) -> dict:
    rows = [("some text", "a")] * 60 + [("other text", "b")] * 30 + [("more text", "c")] * 10
    path = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return validate({"data": {"train": str(path), **data}})


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_held_out_validation_is_stratified_and_sized_by_fraction(tmp_path, fraction):
    raw = read_data(imbalanced_config(tmp_path, validation_fraction=fraction))
    validation, train = Counter(raw.splits["validation"].labels), Counter(raw.splits["train"].labels)
    assert sum(validation.values()) == round(100 * fraction)
    assert sum(train.values()) == 100 - round(100 * fraction)
    assert validation == {"a": round(60 * fraction), "b": round(30 * fraction), "c": round(10 * fraction)}
    assert any("held out" in note for note in raw.notes)


def test_max_train_examples_caps_train_only(tmp_path):
    raw = read_data(imbalanced_config(tmp_path, validation_fraction=0.2, max_train_examples=40))
    assert len(raw.splits["train"].labels) == 40
    assert len(raw.splits["validation"].labels) == 20
    assert set(raw.splits["train"].labels) == {"a", "b", "c"}


# ------------------------------------------------------- a trained run with numeric labels


@pytest.fixture(scope="module")
def numeric_run(tiny_bert, tmp_path_factory) -> dict:
    """Labels 2, 9, 10 (so sorting as text would put 10 first); every 7th row is too long."""
    folder = tmp_path_factory.mktemp("numeric-run")
    frame = word_rows(84, seed=1, long_every=7)
    # One row of exactly MAX_LENGTH tokens: as long as allowed, so not truncated.
    frame.loc[len(frame)] = [" ".join(["good"] * (MAX_LENGTH - 2)), "2"]
    frame.to_csv(folder / "train.csv", index=False)
    config = text_run_config(tiny_bert, folder / "train.csv", validation_fraction=0.25)
    run_dir = train_run(config, folder)
    return {"run": run_dir, "frame": frame, "results": json.loads((run_dir / "results.json").read_text())}


def test_label_map_is_saved_with_the_model(numeric_run):
    model_dir = numeric_run["run"] / "model"
    expected = {0: "2", 1: "9", 2: "10"}

    saved = json.loads((model_dir / "label_map.json").read_text(encoding="utf-8"))
    assert saved["id2label"] == {str(k): v for k, v in expected.items()}
    assert saved["label2id"] == {v: k for k, v in expected.items()}

    hf_config = AutoConfig.from_pretrained(model_dir)
    assert hf_config.id2label == expected
    assert hf_config.label2id == {v: k for k, v in expected.items()}

    assert load_saved_model(model_dir).labels.names == ("2", "9", "10")
    assert numeric_run["results"]["labels"] == ["2", "9", "10"]


def test_truncated_rows_are_counted_in_results(numeric_run, tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    lengths = [len(tokenizer(text)["input_ids"]) for text in numeric_run["frame"]["text"]]
    assert MAX_LENGTH in lengths  # the boundary row is present and must not count
    too_long = sum(length > MAX_LENGTH for length in lengths)
    truncated = numeric_run["results"]["truncated"]
    assert set(truncated) == {"train", "validation"}
    assert sum(truncated.values()) == too_long == 12


def test_held_out_validation_is_the_same_when_the_run_is_evaluated_again(numeric_run, capsys):
    assert numeric_run["results"]["examples"] == {"train": 63, "validation": 22}
    capsys.readouterr()
    assert main(["eval", str(numeric_run["run"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = numeric_run["results"]["final"]["validation"]
    assert metrics["validation"]["examples"] == 22
    assert metrics["validation"]["confusion_matrix"] == final["confusion_matrix"]
    assert metrics["validation"]["loss"] == pytest.approx(final["loss"], abs=1e-5)


# ----------------------------------------------------------------------------- text pairs


def pair_frame(count: int, seed: int) -> pd.DataFrame:
    """Label 'same' when both texts carry the same sentiment word, 'different' otherwise."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        first = rng.choice(["2", "9"])
        second = first if index % 2 == 0 else ("9" if first == "2" else "2")
        rows.append(
            {
                "premise": f"{rng.choice(FILLER)} {rng.choice(WORDS[first])}",
                "hypothesis": f"{rng.choice(FILLER)} {rng.choice(WORDS[second])} {rng.choice(FILLER)}",
                "label": "same" if first == second else "different",
            }
        )
    return pd.DataFrame(rows)


def test_text_pairs_are_encoded_as_two_segments(tiny_bert, tmp_path):
    frame = pair_frame(6, seed=0)
    path = write_table(frame, tmp_path / "pairs.jsonl")
    split = table_split(path, "train", "premise", "label", "hypothesis")
    assert split.inputs == list(zip(frame["premise"], frame["hypothesis"], strict=True))

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    dataset, truncated = tokenize(tokenizer, split.inputs, [0] * 6, MAX_LENGTH)
    assert truncated == 0
    item = dataset[0]
    expected = tokenizer(frame["premise"][0], frame["hypothesis"][0])["input_ids"]
    assert item["input_ids"] == expected
    assert item["token_type_ids"].count(1) == len(tokenizer.tokenize(frame["hypothesis"][0])) + 1


def test_text_pair_run_trains_and_predicts_on_both_texts(tiny_bert, tmp_path, capsys):
    import transformers

    frame = pair_frame(48, seed=1)
    write_table(frame, tmp_path / "train.csv")
    config = text_run_config(tiny_bert, tmp_path / "train.csv", text_column="premise", text_pair_column="hypothesis")
    run_dir = train_run(config, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["labels"] == ["different", "same"]
    assert results["final"]["validation"]["examples"] == 5

    queries = write_table(pair_frame(4, seed=2), tmp_path / "queries.csv")
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--input", str(queries), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)

    model = transformers.AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    query_frame = pd.read_csv(queries)
    with torch.no_grad():
        encoded = tokenizer(
            list(query_frame["premise"]), list(query_frame["hypothesis"]), padding=True, return_tensors="pt"
        )
        probabilities = torch.softmax(model(**encoded).logits, dim=-1)
    assert [row["probability"] for row in rows] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-5)


# -------------------------------------------------------------------------- dynamic padding


def test_batches_are_padded_to_their_longest_example_not_max_length(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["good", "a really good movie", "bad plot"]
    dataset, _ = tokenize(tokenizer, texts, [0, 1, 0], max_length=64)
    lengths = [len(dataset[i]["input_ids"]) for i in range(3)]
    assert lengths == [3, 6, 4]  # stored unpadded

    collate = get_task("text-classification").collate(SimpleNamespace(tokenizer=tokenizer), None)
    batch = collate([dataset[0], dataset[2]])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 0]
    assert collate([dataset[i] for i in range(3)])["input_ids"].shape == (3, 6)
