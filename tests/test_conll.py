"""CoNLL files and tag schemes: read, detected, converted to IOB2, and refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.data.conll import converted, detect_scheme, read_conll
from tunelab.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_sentences_are_read_docstart_skipped_and_the_last_column_is_the_tag(tmp_path):
    path = write(tmp_path, "-DOCSTART- -X- O O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP I-PER\n")
    tokens, tags, starts = read_conll(path, "data.train")
    assert tokens == [["EU", "rejects"], ["Peter"]] and tags == [["I-ORG", "O"], ["I-PER"]] and starts == [3, 6]
    assert read_conll(path, "data.train", tag_column=2)[1] == [["B-NP", "B-VP"], ["B-NP"]]


@pytest.mark.parametrize(
    ("tags", "scheme", "iob2"),
    [
        ([["I-PER", "I-PER", "O", "I-LOC"]], "iob1", [["B-PER", "I-PER", "O", "B-LOC"]]),
        ([["I-PER", "B-PER", "O"]], "iob1", [["B-PER", "B-PER", "O"]]),  # adjacent same-type entities
        ([["I-PER", "B-LOC", "I-LOC"]], "iob1", [["B-PER", "B-LOC", "I-LOC"]]),  # a B- after another type
        ([["B-PER", "I-PER", "B-PER", "O"]], "iob2", [["B-PER", "I-PER", "B-PER", "O"]]),
        ([["B-PER", "E-PER", "S-LOC", "O"]], "bioes", [["B-PER", "I-PER", "B-LOC", "O"]]),
    ],
)
def test_each_scheme_is_detected_and_converted_to_iob2(tags, scheme, iob2):
    assert detect_scheme(tags, "data.train") == scheme
    assert converted(tags, "data.train") == (iob2, scheme)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("EU I-ORG\nrejects\n", r"line 2 has 1 column\(s\), fewer than the tag column needs"),
        ("text,label\nthis film is great,positive\n", r"line 1 has 1 column\(s\)"),
        ("this film is great,positive\n", "tag 'great,positive' is not O or B-/I-/E-/S-"),
        ("EU X-ORG\n", "tag 'X-ORG' is not O or B-/I-/E-/S-"),
        ("\n\n-DOCSTART- -X- O O\n\n", "holds no sentences"),
    ],
)
def test_files_that_are_not_conll_get_one_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_conll(write(tmp_path, text), "data.train")


def test_mixed_schemes_and_impossible_sequences_are_reported_not_repaired():
    with pytest.raises(UserError, match="mixes IOB1 and BIOES"):
        detect_scheme([["S-PER"], ["O", "I-LOC"]], "data.train")
    with pytest.raises(UserError, match="sentence 1, token 2: 'I-LOC' cannot follow"):
        converted([["B-PER", "I-LOC"]], "data.train", "iob2")
    with pytest.raises(UserError, match=r"sentence 2 ends inside an entity \('I-LOC'"):
        converted([["S-PER"], ["O", "B-LOC", "I-LOC"]], "data.train", "bioes")
    with pytest.raises(UserError, match="'E-PER' cannot follow"):
        converted([["O", "E-PER"]], "data.train", "bioes")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/conll2003 is absent")
def test_conll2003_reads_as_its_readme_counts_and_is_iob1():
    tokens, tags, _ = read_conll(SHARED / "train.txt", "data.train")
    assert len(tokens) == 14_041 and sum(map(len, tokens)) == 203_621
    iob2, scheme = converted(tags, "data.train")
    assert scheme == "iob1" and all(sentence[0][:2] != "I-" for sentence in iob2)
