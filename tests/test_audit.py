"""`tunelab audit` finds every planted fault: duplicates, near-duplicates, leaks, imbalance,
rows too long for max_length, undecodable images."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from tunelab.cli import main
from tunelab.config import validate
from tunelab.data.audit import audit

WORDS = [
    "actor", "plot", "scene", "music", "story", "camera", "light",
    "dialogue", "ending", "pace", "humour", "drama", "cast", "script",
]  # fmt: skip


def sentence(rng: random.Random, length: int = 8) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(length))


@pytest.fixture
def planted(tmp_path):
    """A train/test pair with known faults, each planted a known number of times."""
    rng = random.Random(0)
    train = [(sentence(rng), "pos") for _ in range(100)] + [(sentence(rng), "neg") for _ in range(5)]  # 1:20
    originals = [train[i][0] for i in range(5)]
    train += [(text, "pos") for text in originals]  # 5 exact duplicates
    near_sources = [train[i][0] for i in range(10, 15)]
    train += [(text.upper() + " !", "pos") for text in near_sources[:3]]  # near: case and punctuation
    train += [(text.replace(text.split()[0], "film"), "pos") for text in near_sources[3:]]  # one word changed
    train += [(sentence(rng, 200), "pos") for _ in range(4)]  # too long for max_length 64
    test = [(sentence(rng), "pos") for _ in range(20)] + [(train[i][0], "pos") for i in range(30, 33)]  # 3 leaks
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
    return tmp_path


def test_every_planted_text_fault_is_found(planted, tiny_bert, write_config, capsys):
    config = {
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(planted / "train.csv"), "test": str(planted / "test.csv"), "max_length": 64},
    }
    from tunelab.models.loading import load_tokenizer

    report = audit(validate(config), load_tokenizer(validate(config)))
    train = report["splits"]["train"]
    assert train["exact_duplicates"]["extra_copies"] == 5
    assert train["near_duplicates"]["count"] == 5
    assert train["imbalance_ratio"] == pytest.approx(114 / 5)  # 100 + 14 planted positives vs 5 negatives
    assert train["tokens"]["over_max_length"]["count"] == 4
    assert report["leakage"]["test"]["exact"]["count"] == 3
    assert report["leakage"]["test"]["exact"]["rows"] == [21, 22, 23]
    assert any("leakage: 3 test rows" in w for w in report["warnings"])
    assert any("imbalanced 23:1" in w for w in report["warnings"])
    assert report["splits"]["test"]["exact_duplicates"]["extra_copies"] == 0

    code = main(["audit", str(write_config(config)), "-o", str(planted / "audit")])
    captured = capsys.readouterr()
    assert code == 0 and "data audit" in captured.out and "leakage: 3 test rows" in captured.err
    assert json.loads((planted / "audit" / "audit.json").read_text())["leakage"]["test"]["exact"]["count"] == 3
    page = (planted / "audit" / "audit.html").read_text()
    assert page.count("<img") == 2 and "leakage: 3 test rows" in page and "Suspected label errors" in page


def test_audit_looks_at_max_train_examples_rows_and_names_them_by_their_file_row(planted, tiny_bert):
    config = {
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(planted / "train.csv"), "max_train_examples": 60, "max_length": 64},
    }
    from tunelab.models.loading import load_tokenizer

    report = audit(validate(config), load_tokenizer(validate(config)))
    train = report["splits"]["train"]
    assert train["rows"] == 60 and train["sampled"] == {"rows": 60, "of": 119}
    assert sum(train["labels"].values()) == 60
    lines = (planted / "train.csv").read_text().splitlines()[1:]  # row N is line N after the header
    for group in train["exact_duplicates"]["examples"]:  # the rows named hold one text, in the file
        assert len({lines[row - 1].rsplit(",", 1)[0] for row in group}) == 1
    too_long = train["tokens"]["over_max_length"]["rows"]
    assert too_long and all(len(lines[row - 1].split()) > 100 for row in too_long)  # the planted 200-word rows


def test_undecodable_images_and_copies_are_found(tmp_path):
    root = tmp_path / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (8, 8), (index * 40, 10 if label == "a" else 200, 0)).save(root / label / f"{index}.png")
    for index in range(3):
        (root / "a" / f"broken{index}.png").write_bytes(b"\x89PNG not really %d" % index)
    (root / "b" / "copy.png").write_bytes((root / "b" / "0.png").read_bytes())
    report = audit(validate({"task": "image-classification", "model": {"source": "cnn"}, "data": {"train": str(root)}}))
    found = report["splits"]["train"]
    assert sorted(p.rsplit("/", 1)[-1] for p in found["undecodable"]) == ["broken0.png", "broken1.png", "broken2.png"]
    assert found["exact_duplicates"]["extra_copies"] == 1
    assert found["labels"] == {"a": 7, "b": 5}
    assert any("3 images cannot be decoded" in w for w in report["warnings"])


def test_flipped_labels_rank_as_the_top_suspects():
    from tunelab.data.label_issues import label_suspects

    rng = np.random.default_rng(0)
    labels = ["pos" if i % 2 else "neg" for i in range(400)]
    centres = {"pos": np.ones(8), "neg": -np.ones(8)}
    features = np.stack([centres[y] + rng.normal(0, 0.7, 8) for y in labels])
    flipped = [3, 50, 120, 260, 399]
    for row in flipped:
        labels[row] = "neg" if labels[row] == "pos" else "pos"
    found = label_suspects(features, labels)
    assert found["probe_accuracy"] > 0.95
    assert sorted(found["top_tenth"][:5]) == [row + 1 for row in flipped]  # 1-based rows, most suspect first
    first = found["suspects"][0]
    assert first["given"] != first["suggested"] and first["row"] - 1 in flipped


def test_the_cli_audit_probes_labels_with_the_base_model(planted, tiny_bert, write_config, capsys):
    config = {"model": {"source": str(tiny_bert)}, "data": {"train": str(planted / "train.csv"), "max_length": 64}}
    assert main(["audit", str(write_config(config)), "-o", str(planted / "audit"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    found = report["label_errors"]
    assert found["rows_probed"] == report["splits"]["train"]["rows"]
    assert len(found["top_tenth"]) == -(-found["rows_probed"] // 10)
    assert all(1 <= row <= found["rows_probed"] for row in found["top_tenth"])


MALFORMED = {
    "ragged.csv": ("text,label\ngood movie,pos\nbad,neg,extra\nfine,pos\n", "Expected 2 fields in line 3, saw 3"),
    "broken.jsonl": (
        '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"\n',
        "broken.jsonl line 2 is not valid JSON",
    ),
    "nolabel.csv": ("text,sentiment\ngood,pos\nbad,neg\n", "column 'label' not in"),
    "mixed.jsonl": (
        '{"text": "good", "label": 1}\n{"text": "bad", "label": "neg"}\n{"text": "ok", "label": 1}\n',
        "column 'label' of {path} mixes numbers (first at data row 1) and text (first at data row 2)",
    ),
    "mixed.csv": ("text,label\ngood,pos\nbad,0\nok,pos\n", "mixes numbers (first at data row 2) and text (first at"),
}


@pytest.mark.parametrize("command", ["audit", "train"])
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_files_name_the_file_and_line(name, command, tiny_bert, write_config, tmp_path, capsys):
    content, expected = MALFORMED[name]
    path = tmp_path / name
    path.write_text(content)
    config = write_config({"model": {"source": str(tiny_bert)}, "data": {"train": str(path)}})
    argv = [command, str(config), "-o", str(tmp_path / "out")] + (["--probe-rows", "0"] if command == "audit" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.train:") and "\n" not in err and "Traceback" not in err
    assert expected.format(path=path) in err and str(path) in err


def test_train_warns_about_leakage_and_imbalance_before_it_starts(planted, tiny_bert, tmp_path, capsys):
    from tunelab.builder import run_training
    from tunelab.rundir import prepare_run_dir

    config = {
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(planted / "train.csv"), "test": str(planted / "test.csv"), "max_length": 64},
        "train": {"max_steps": 1, "batch_size": 8},
        "evaluate": {"base": False},
    }
    results = run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    err = capsys.readouterr().err
    assert "leakage: 3 of 23 test rows also appear in train" in err
    # The held-out validation split catches copies of the planted duplicates: leakage as well.
    assert "validation rows also appear in train" in err
    assert "train: classes are imbalanced 26:1" in err
    # The four planted 200-word rows fell in train after the hold-out; they are cut.
    assert "train: 4 of 107 rows are longer than data.max_length (64 tokens) and are cut" in results["data_warnings"]
    assert len(results["data_warnings"]) == 4


def test_the_domain_gap_separates_other_data_and_not_the_same_data():
    from tunelab.data.label_issues import domain_gap

    rng = np.random.default_rng(0)
    target = rng.normal(0, 1, (200, 6))
    same = rng.normal(0, 1, (200, 6))
    shifted = rng.normal(1.5, 1, (200, 6))
    assert domain_gap(target, same)["classifier_auc"] < 0.65
    far = domain_gap(target, shifted)
    assert far["classifier_auc"] > 0.95 and far["rows"] == [200, 200]


def test_audit_reports_the_domain_gap_to_a_reference_file(planted, tiny_bert, write_config, capsys):
    reference = planted / "reference.csv"
    reference.write_text("text\n" + "\n".join(f"completely other words number {i}" for i in range(40)) + "\n")
    config = {"model": {"source": str(tiny_bert)}, "data": {"train": str(planted / "train.csv")}}
    argv = ["audit", str(write_config(config)), "-o", str(planted / "a"), "--reference", str(reference), "--json"]
    assert main(argv) == 0
    gap = json.loads(capsys.readouterr().out)["domain_gap"]
    assert gap["reference"] == str(reference) and gap["rows"] == [119, 40]
    assert gap["classifier_auc"] > 0.9  # random tiny-BERT features still tell these two apart


def test_preparation_cleans_every_split_and_records_what_it_removed(tiny_bert, tmp_path):
    from tunelab.builder import run_training
    from tunelab.rundir import prepare_run_dir

    rows = ["Good   movie,pos", "good movie,pos", ",neg", "Awful\u00a0plot,neg", "fine,pos", "dull,neg"] * 2
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("text,label\n  GOOD  movie ,pos\nawful plot,neg\n")
    prepare = {"unicode_normalize": "NFKC", "lowercase": True, "drop_empty": True, "deduplicate": True}
    config = {
        "model": {"source": str(tiny_bert)},
        "data": {
            "train": str(tmp_path / "train.csv"),
            "validation": str(tmp_path / "test.csv"),
            "test": str(tmp_path / "test.csv"),
            "prepare": prepare,
        },
        "train": {"max_steps": 1, "batch_size": 4},
        "evaluate": {"base": False},
    }
    results = run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    train = results["preparation"]["train"]
    assert train == {"rows_in": 12, "changed": 4, "empty_dropped": 2, "duplicates_dropped": 6, "rows_out": 4}
    assert results["preparation"]["test"]["changed"] == 1
    assert results["examples"]["train"] == 4

    without = config | {"data": config["data"] | {"prepare": {}}}
    with pytest.raises(Exception, match="have an empty 'text'.*data.prepare.drop_empty: true drops them"):
        run_training(validate(without), prepare_run_dir(tmp_path / "other", False), progress=False)


def test_balanced_class_weights_make_a_rare_class_count_more(planted, tiny_bert, tmp_path):
    import torch

    from tunelab.builder import run_training
    from tunelab.evaluate import balanced_weights
    from tunelab.rundir import prepare_run_dir
    from tunelab.tasks import get_task

    weights = balanced_weights([0] * 20 + [1] * 5, 2)
    torch.testing.assert_close(weights, torch.tensor([25 / 40, 25 / 10]))

    class Fixed(torch.nn.Module):  # logits that favour class 0 for every row
        def forward(self, x):
            return torch.tensor([[2.0, 0.0]]).repeat(len(x), 1)

    batch = {"x": torch.zeros(2), "labels": torch.tensor([0, 1])}
    task = get_task("text-classification")
    plain = task.loss_function()(Fixed(), batch)
    weighted = task.loss_function(weights)(Fixed(), batch)
    assert weighted > plain  # the misclassified rare row now weighs four times the common one

    config = {
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(planted / "train.csv")},
        "train": {"max_steps": 2, "batch_size": 8, "class_weights": "balanced"},
        "evaluate": {"base": False},
    }
    results = run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
    assert results["steps"] == 2


@pytest.mark.parametrize("method", ["oversample", "undersample"])
def test_resampling_balances_train_only_and_records_what_it_did(planted, method):
    from tunelab.data import read_data

    config = validate(
        {
            "data": {"train": str(planted / "train.csv"), "test": str(planted / "test.csv")},
            "train": {"resample": method},
        }
    )
    raw = read_data(config)
    record = raw.preparation["train"]["resample"]
    before = record["per_class_before"]
    counts = {label: raw.splits["train"].labels.count(label) for label in before}
    target = max(before.values()) if method == "oversample" else min(before.values())
    assert counts == {"neg": target, "pos": target} and record["per_class_after"] == target
    assert record["rows_out"] == 2 * target == len(raw.splits["train"].labels)
    assert len(raw.splits["test"].labels) == 23  # evaluation data is never resampled
    kept = set(raw.splits["train"].inputs)
    plain = read_data(validate({"data": config.data.model_dump()}))
    assert kept <= set(plain.splits["train"].inputs)  # rows repeated or dropped, never invented
    if method == "oversample":
        assert kept == set(plain.splits["train"].inputs)


def test_class_weights_and_resampling_together_are_refused(planted):
    from tunelab.errors import UserError

    with pytest.raises(UserError, match="class_weights and resample both correct class imbalance"):
        validate({"data": {"train": "x.csv"}, "train": {"class_weights": "balanced", "resample": "oversample"}})
