"""`tunelab audit` on tagged data finds every planted fault: impossible tag transitions (all of
them, where training stops at the first), duplicates tagged two ways, sentences over max_length,
validation sentences also in train, and a file that mixes schemes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.config import validate
from tunelab.data.tag_audit import tag_audit
from tunelab.models.loading import load_tokenizer

LONG = (["word"] * 40, ["O"] * 40)
TRAIN = [  # BIOES, with impossible transitions in sentences 3, 4 and 8
    (["Angela", "Merkel", "visited", "Paris"], ["B-PER", "E-PER", "O", "S-LOC"]),
    (["Acme", "hired", "John"], ["S-ORG", "O", "S-PER"]),
    (["John", "met", "Mary"], ["S-PER", "O", "I-PER"]),  # O -> I-PER
    (["Berlin", "is", "big"], ["B-LOC", "O", "O"]),  # B-LOC -> O
    (["Acme", "hired", "John"], ["S-ORG", "O", "S-PER"]),  # a copy of sentence 2
    (["acme", "hired", "john"], ["O", "O", "S-PER"]),  # sentence 2 again, tagged another way
    LONG,
    (["Visit", "New", "York"], ["O", "B-LOC", "I-LOC"]),  # ends inside an entity
]
VALIDATION = [
    (["Angela", "Merkel", "visited", "Paris"], ["B-PER", "E-PER", "O", "S-LOC"]),  # also in train
    (["Angela", "Merkel", "visited", "Paris", "today"], ["B-PER", "E-PER", "O", "S-LOC", "O"]),  # nearly
    (["Mary", "flew"], ["S-PER", "O"]),
]


def write_conll(path: Path, sentences) -> list[int]:
    """Writes the file; the line each sentence starts on."""
    lines, starts = ["-DOCSTART- O", ""], []
    for words, tags in sentences:
        starts.append(len(lines) + 1)
        lines += [f"{w} {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return starts


@pytest.fixture
def planted(tmp_path, tiny_bert) -> tuple[dict, list[int]]:
    starts = write_conll(tmp_path / "train.conll", TRAIN)
    write_conll(tmp_path / "dev.conll", VALIDATION)
    config = {
        "task": "token-classification",
        "model": {"source": str(tiny_bert)},
        "data": {
            "train": str(tmp_path / "train.conll"),
            "validation": str(tmp_path / "dev.conll"),
            "max_length": 16,
            "tag_scheme": "bioes",
        },  # as declared: "O I-PER" alone would read as IOB1
    }
    return config, starts


def test_the_tag_audit_counts_every_planted_fault_and_says_where_it_stands(planted):
    config, starts = planted
    report = tag_audit(validate(config), load_tokenizer(validate(config)))
    train = report["splits"]["train"]
    assert train["scheme"] == "bioes" and train["rows"] == 8 and train["words"] == 22 + 40
    assert train["entities"] == {"PER": 6, "LOC": 3, "ORG": 2}  # conlleval's chunks, read as written
    assert train["tags"]["S-PER"] == 4 and train["tags"]["O"] == 9 + 40

    invalid = train["invalid_transitions"]
    assert (invalid["count"], invalid["sentences"]) == (4, 3)  # sentence 3 also ends inside its I-PER
    assert invalid["pairs"] == {"O → I-PER": 1, "I-PER → end": 1, "B-LOC → O": 1, "I-LOC → end": 1}
    assert invalid["examples"][0]["at"] == f"sentence 3 (line {starts[2]}), token 3"
    assert invalid["examples"][3]["at"] == f"sentence 8 (line {starts[7]}), the end"

    assert train["exact_duplicates"]["extra_copies"] == 2  # sentence 2 twice more, case aside
    assert train["exact_duplicates"]["examples"] == [[f"line {starts[i]}" for i in (1, 4, 5)]]
    assert train["conflicting_duplicates"] == {"groups": 1, "examples": [[f"line {starts[i]}" for i in (1, 4, 5)]]}

    tokens = train["tokens"]
    assert tokens["over_max_length"] == {"count": 1, "rows": [f"line {starts[6]}"]}
    assert tokens["words_cut"] == 40 - (16 - 2)  # [CLS] and [SEP] take two of the sixteen

    leak = report["leakage"]["validation"]
    assert leak["exact"] == {"count": 1, "rows": ["line 3"]}
    assert leak["near"]["rows"] == 1 and leak["near"]["examples"][0][:2] == [f"line {3 + 5}", f"line {starts[0]}"]

    said = "\n".join(report["warnings"])
    assert "train: 4 tags in 3 sentences cannot follow the tag before them in BIOES" in said
    assert "train: 1 sentences appear more than once with different tags" in said
    assert "training loses 26 words to the cut" in said
    assert "leakage: 1 validation sentences also in train exactly, 1 nearly" in said


def test_audit_on_tagged_data_prints_its_tables_and_writes_the_page(planted, write_config, tmp_path, capsys):
    config, _ = planted
    code = main(["audit", str(write_config(config)), "-o", str(tmp_path / "audit")])
    captured = capsys.readouterr()
    assert code == 0
    assert "tagged-data audit" in captured.out and "entities per type" in captured.out
    assert "sentences also in train" in captured.out
    assert "cannot follow the tag before them" in captured.err.replace("\n", " ")
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["splits"]["validation"]["entities"] == {"PER": 3, "LOC": 2}
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert "Sentences also in train" in page and "O → I-PER" in page and "<img" in page


def test_audit_of_a_conll_file_without_a_config_reads_it_as_tags(planted, tmp_path, capsys):
    config, _ = planted
    code = main(["audit", "--data", config["data"]["train"], "--model", config["model"]["source"],
                 "-o", str(tmp_path / "audit")])  # fmt: skip
    assert code == 0 and "tagged-data audit" in capsys.readouterr().out


def test_a_training_run_on_the_same_file_stops_at_the_first_fault(planted, write_config, capsys):
    config, starts = planted
    code = main(["train", str(write_config(config)), "-o", str(Path(config["data"]["train"]).parent / "run")])
    assert code == 2 and "sentence 3, token 3: 'I-PER' cannot follow" in capsys.readouterr().err


def test_a_file_mixing_schemes_is_a_finding_named_by_its_data_row(tmp_path, tiny_bert):
    rows = [{"tokens": ["John", "Smith"], "tags": ["I-PER", "I-PER"]}, {"tokens": ["Paris"], "tags": ["S-LOC"]}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = {"task": "token-classification", "model": {"source": str(tiny_bert)}, "data": {"train": str(path)}}
    found = tag_audit(validate(config))["splits"]["train"]
    assert found["scheme"] == "mixed" and "mixes IOB1 and BIOES" in found["mixed_schemes"]
    assert found["invalid_transitions"]["count"] == 0  # no scheme to hold the tags to
    config["data"]["tag_scheme"] = "iob2"
    invalid = tag_audit(validate(config))["splits"]["train"]["invalid_transitions"]
    assert invalid["pairs"] == {"start → I-PER": 1, "start → S-LOC": 1}
    assert invalid["examples"][1]["at"] == "sentence 2 (data row 2), token 1"


def test_a_tagged_audit_refuses_the_class_only_reference_probe(planted, write_config, tmp_path, capsys):
    config, _ = planted
    code = main(["audit", str(write_config(config)), "--reference", config["data"]["train"], "-o", str(tmp_path / "a")])
    assert code == 2 and "--reference" in capsys.readouterr().err
