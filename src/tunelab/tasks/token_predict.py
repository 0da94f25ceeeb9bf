"""``predict`` for token classification: tags per word and entity spans with character offsets
and a confidence, for raw texts or for sentences already split into tokens (CoNLL or JSONL).

Long inputs are read in windows of ``data.max_length`` sub-tokens that overlap by a quarter; each
word takes the tag of the window where it stands furthest from an edge, so nothing is cut.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.data.conll import read_conll
from tunelab.data.prepare import prepared_input
from tunelab.data.readers import read_table
from tunelab.data.tokens import CONLL_SUFFIXES
from tunelab.errors import UserError
from tunelab.evaluate import output_logits

BATCH = 32


def predict_tags(config, loaded, texts: list[str] | None, input_path: str | None) -> list[dict]:
    """One row per text or sentence: its words, their tags and the entities they make."""
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("model.source: token classification needs a fast tokenizer (one with word ids)")
    sentences = None
    if texts is None:
        texts, sentences = read_inputs(Path(input_path), config)
    inputs = texts if sentences is None else [prepared_input(tuple(words), config.data.prepare) for words in sentences]
    rows = []
    for start in range(0, len(inputs), BATCH):
        chunk = inputs[start : start + BATCH]
        words, spans, tags, confidence = _tag_chunk(loaded, chunk, sentences is not None, config.data.max_length)
        for index, item in enumerate(chunk):
            text = item if sentences is None else " ".join(item)
            row_words = list(item) if sentences is not None else [text[a:b] for a, b in spans[index]]
            rows.append(_row(text, row_words, spans[index], tags[index], confidence[index], loaded.labels.names))
    return rows


def read_inputs(path: Path, config) -> tuple[list[str] | None, list[list[str]] | None]:
    """(texts, None) for raw text, (None, sentences) for tokens: CoNLL (``.conll``/``.iob``/``.bio``,
    or a ``.txt`` that starts with ``-DOCSTART-``), or JSONL/Parquet with the tokens column."""
    if not path.is_file():
        raise UserError(f"--input: {'not found' if not path.exists() else 'not a regular file'}: {path}")
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES and (suffix != ".txt" or _starts_a_document(path)):
        return None, read_conll(path, "--input", tag_column=None)[0]
    if suffix == ".txt":
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"--input: {path} is empty")
        return lines, None
    frame = read_table(path, "--input")
    column = config.data.tokens_column
    if column in frame.columns:
        return None, [list(value.tolist() if hasattr(value, "tolist") else value) for value in frame[column]]
    if "text" in frame.columns:
        return [str(value) for value in frame["text"]], None
    raise UserError(f"--input: {path} has neither a '{column}' column (tokens) nor a 'text' column")


def _starts_a_document(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as file:
        first = next((line for line in file if line.strip()), "")
    return first.split()[:1] == ["-DOCSTART-"]


def _tag_chunk(loaded, chunk: list, split: bool, max_length: int) -> tuple:
    """Per input: word character spans, tag ids and their probabilities, read in windows."""
    encoded = loaded.tokenizer(
        [list(item) for item in chunk] if split else chunk, is_split_into_words=split, truncation=True,
        max_length=max_length, stride=max_length // 4, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding=True, return_tensors="pt",
    )  # fmt: skip
    owners = encoded.pop("overflow_to_sample_mapping").tolist()
    offsets = encoded.pop("offset_mapping").tolist()
    with torch.inference_mode():
        logits = output_logits(loaded.model.eval()(**encoded)).float()
    probabilities = torch.softmax(logits[:, -encoded["input_ids"].shape[1] :], dim=-1)  # past virtual tokens
    best, spans = {}, {}
    for window, owner in enumerate(owners):
        word_ids = encoded.word_ids(window)
        length = int(encoded["attention_mask"][window].sum())
        previous = None
        for position, word in enumerate(word_ids):
            if word is None:
                continue
            start, end = offsets[window][position]
            first, last = spans.get((owner, word), (start, end))
            spans[(owner, word)] = (min(first, start), max(last, end))
            if word != previous:
                centre = min(position, length - 1 - position)
                if (owner, word) not in best or centre > best[(owner, word)][0]:
                    probability, tag = probabilities[window, position].max(dim=-1)
                    best[(owner, word)] = (centre, int(tag), float(probability))
            previous = word
    return _per_input(chunk, split, best, spans)


def _per_input(chunk: list, split: bool, best: dict, spans: dict) -> tuple:
    words, char_spans, tags, confidence = [], [], [], []
    for owner, item in enumerate(chunk):
        count = len(item) if split else 1 + max((word for o, word in spans if o == owner), default=-1)
        found = [best.get((owner, word), (0, 0, 1.0)) for word in range(count)]  # a word with no sub-token: O
        words.append(count)
        tags.append([tag for _, tag, _ in found])
        confidence.append([p for _, _, p in found])
        if split:  # offsets into the words joined by spaces
            ends = torch.tensor([len(w) + 1 for w in item]).cumsum(0).tolist()
            char_spans.append([(end - len(w) - 1, end - 1) for w, end in zip(item, ends, strict=True)])
        else:
            char_spans.append([spans[(owner, word)] for word in range(count)])
    return words, char_spans, tags, confidence


def _row(text: str, words: list[str], spans: list, tag_ids: list[int], confidence: list[float], names) -> dict:
    from seqeval.metrics.sequence_labeling import get_entities

    tags = [names[i] for i in tag_ids]
    entities = []
    for kind, first, last in get_entities(tags):
        start, end = spans[first][0], spans[last][1]
        share = confidence[first : last + 1]
        entities.append(
            {"text": text[start:end], "type": kind, "start": start, "end": end, "confidence": sum(share) / len(share)}
        )
    return {"input": text, "entities": entities, "tokens": words, "tags": tags}
