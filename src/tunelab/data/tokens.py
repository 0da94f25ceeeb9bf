"""Token-classification data: sentences of words with one tag each, read from CoNLL files or from
JSONL/Parquet rows (a list of tokens and a list of tags), their tag set, and the alignment of words
to the model's sub-tokens.

The first sub-token of a word carries the word's tag; the rest carry it too, moved up by the
number of tags (``id + len(tags)``, B- turned to I-), so the task's loss may learn from them
(``data.label_all_subtokens``) while every score stays per word. Words the model never sees
(cut by ``max_length``) are counted, not silently dropped from the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.data.conll import check_tag, converted, read_conll
from tunelab.data.labels import LabelMap
from tunelab.data.readers import RawSplit, read_table, require_columns
from tunelab.data.text import TokenizedDataset
from tunelab.errors import UserError
from tunelab.evaluate import IGNORED

CONLL_SUFFIXES = {".txt", ".conll", ".iob", ".bio"}


@dataclass(frozen=True)
class TagMap(LabelMap):
    """The tags a model puts out, in IOB2: ``O`` first, then B- and I- of each entity type."""

    @classmethod
    def from_tags(cls, sentences: list) -> TagMap:
        kinds = sorted({tag[2:] for sentence in sentences for tag in sentence if tag != "O"})
        if not kinds:
            raise UserError("data.train: no entity tags at all (every tag is O); nothing to learn")
        return cls(("O", *(f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I"))))

    @property
    def kinds(self) -> list[str]:
        return sorted({name[2:] for name in self.names if name != "O"})

    def encode(self, labels: list, where: str) -> list[list[int]]:
        lookup = self.label2id
        for index, sentence in enumerate(labels):
            unknown = next((tag for tag in sentence if tag not in lookup), None)
            if unknown is not None:
                raise UserError(
                    f"{where}: tag '{unknown}' (sentence {index + 1}) never appears in train; "
                    f"train's entity types are: {', '.join(self.kinds)}"
                )
        return [[lookup[tag] for tag in sentence] for sentence in labels]


def token_split(path: str | Path, role: str, data, where: str | None = None) -> RawSplit:
    """One file of tagged sentences, tags converted to IOB2. Inputs are tuples of words."""
    where = where or f"data.{role}"
    sentences, tags, _ = tagged_sentences(path, data, where)
    scheme = None if data.tag_scheme == "auto" else data.tag_scheme
    tags, found = converted(tags, where, scheme)
    source = f"{Path(path)} ({found.upper()} tags)"
    return RawSplit(role, [tuple(words) for words in sentences], tags, source)


def tagged_sentences(path: str | Path, data, where: str) -> tuple[list, list, list[str]]:
    """Words and tags (as written) per sentence, and where each sentence starts ("line 12" in
    CoNLL, "data row 3" in a table)."""
    path = Path(path)
    if path.suffix.lower() in CONLL_SUFFIXES:
        sentences, tags, starts = read_conll(path, where, data.tag_column)
        return sentences, tags, [f"line {number}" for number in starts]
    sentences, tags = _table_sentences(path, where, data.tokens_column, data.tags_column)
    return sentences, tags, [f"data row {row}" for row in range(1, len(sentences) + 1)]


def _table_sentences(path: Path, where: str, tokens_column: str, tags_column: str) -> tuple[list, list]:
    frame = read_table(path, where)
    require_columns(frame, [tokens_column, tags_column], where, path)
    sentences, tags = [], []
    for row, (words, labels) in enumerate(zip(frame[tokens_column], frame[tags_column], strict=True), start=1):
        words, labels = _listed(words, tokens_column, where, row), _listed(labels, tags_column, where, row)
        if len(words) != len(labels):
            raise UserError(
                f"{where}: data row {row} has {len(words)} tokens and {len(labels)} tags; each token needs one tag"
            )
        if not words:
            raise UserError(f"{where}: data row {row} has no tokens")
        for tag in labels:
            check_tag(tag, where, f"{path} data row {row}")
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


def _listed(value, column: str, where: str, row: int) -> list[str]:
    if hasattr(value, "tolist"):  # Parquet gives arrays
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{where}: column '{column}' at data row {row} is not a list of strings")
    return value


def aligned(tokenizer, sentences: list, tag_ids: list[list[int]], max_length: int, tags: int) -> tuple:
    """The dataset of sub-token ids with their labels, and how many words ``max_length`` cut."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("model.source: token classification needs a fast tokenizer (one with word ids)")
    encodings = tokenizer([list(words) for words in sentences], is_split_into_words=True, truncation=True,
                          max_length=max_length)  # fmt: skip
    labels, cut = [], 0
    for index, ids in enumerate(tag_ids):
        row, previous = [], None
        for word in encodings.word_ids(index):
            if word is None:
                row.append(IGNORED)
            elif word != previous:
                row.append(ids[word])
            else:
                row.append(continued(ids[word], tags))
            previous = word if word is not None else previous
        seen = {word for word in encodings.word_ids(index) if word is not None}
        cut += len(ids) - len(seen)
        labels.append(row)
    keep = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encodings]
    return TokenizedDataset({key: encodings[key] for key in keep}, labels), cut


def continued(tag_id: int, tags: int) -> int:
    """A later sub-token's label: the word's tag as I- (B- ids are odd, their I- the next id),
    moved past the tag ids so scores skip it."""
    return (tag_id + 1 if tag_id % 2 == 1 else tag_id) + tags
