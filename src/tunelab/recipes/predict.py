"""`tunelab predict`: what a finished run says about new texts or images: labels and
probabilities, or numbers, as its task puts them."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.builder.runtime import quiet_libraries
from tunelab.data.images import open_image
from tunelab.data.prepare import prepared_input
from tunelab.data.readers import IMAGE_SUFFIXES, not_a_regular_file, read_table, require_columns
from tunelab.errors import UserError
from tunelab.evaluate import output_logits
from tunelab.recipes.evaluate import load_run
from tunelab.tasks import get_task

BATCH = 64


def run_prediction(run_dir: Path, input_path: str | None, texts: list[str] | None, opened=None) -> list[dict]:
    """Predictions for texts or a file, by the run's model (``opened``: the run's config and model,
    already read, as :func:`load_run` gives them)."""
    quiet_libraries()
    config, loaded = opened or load_run(run_dir)
    task = get_task(config)
    own = task.predict_rows(config, loaded, texts, input_path)
    if own is not None:
        return own
    if task.reads(config) == "text":
        pair_column = config.data.text_pair_column
        if texts and pair_column:
            raise UserError(
                f"--text: this run reads text pairs; use --input with a file that has the columns "
                f"'{config.data.text_column}' and '{pair_column}'"
            )
        inputs = texts if texts else _texts_from_file(Path(input_path), config.data.text_column, pair_column)
        inputs = [prepared_input(item, config.data.prepare) for item in inputs]  # as the model saw in training
        encode = lambda chunk: _encode_texts(loaded.tokenizer, chunk, config.data.max_length)  # noqa: E731
    else:
        if texts:
            raise UserError("--text: this run reads images; use --input with an image or a folder")
        inputs = _images_from_path(Path(input_path))
        encode = lambda chunk: {"pixel_values": loaded.image_transform([open_image(p, "--input") for p in chunk])}  # noqa: E731
    model = loaded.model.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(inputs), BATCH):
            chunk = inputs[start : start + BATCH]
            predicted = task.predictions(output_logits(model(**encode(chunk))).float(), loaded.labels)
            for item, row in zip(chunk, predicted, strict=True):
                rows.append({"input": list(item) if isinstance(item, tuple) else str(item)} | row)
    return rows


def write_predictions(rows: list[dict], path: Path) -> None:
    """Predictions as ``.jsonl`` (one row a line), ``.json`` (a list) or ``.csv``/``.tsv`` (one
    column per class probability); an existing file is never replaced."""
    import json

    import pandas as pd

    from tunelab.io import write_atomic

    suffix = path.suffix.lower()
    tagged = bool(rows) and "tags" in rows[0]  # a tag per word: CoNLL may be written too
    if suffix not in (".jsonl", ".json", ".csv", ".tsv") and not (tagged and suffix in (".conll", ".txt")):
        extra = ", .conll or .txt (CoNLL)" if tagged else ""
        raise UserError(f"--output: {path} must end in .jsonl, .json, .csv or .tsv{extra}")
    if path.exists():
        raise UserError(f"--output: {path} already exists; choose another file")
    if not path.parent.is_dir():
        raise UserError(f"--output: the folder {path.parent} does not exist")
    if suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif suffix in (".conll", ".txt"):
        text = "".join("".join(f"{w} {t}\n" for w, t in zip(r["tokens"], r["tags"], strict=True)) + "\n" for r in rows)
    elif suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False, indent=1)
    else:
        text = pd.DataFrame([_flat(row) for row in rows]).to_csv(index=False, sep="," if suffix == ".csv" else "\t")
    try:
        write_atomic(path, text)
    except OSError as error:
        raise UserError(f"--output: cannot write {path}: {error.strerror or error}") from None


def _flat(row: dict) -> dict:
    """One row as table columns: a text pair joined, each class probability its own ``p(name)``."""
    flat = {key: value for key, value in row.items() if key != "probabilities"}
    if isinstance(flat["input"], list):
        flat["input"] = " | ".join(flat["input"])
    for key in ("tokens", "tags"):  # token classification: a word and a tag per place, space-separated
        if key in flat:
            flat[key] = " ".join(flat[key])
    if "entities" in flat:
        flat["entities"] = "; ".join(f"{e['text']} ({e['type']} {e['start']}-{e['end']})" for e in flat["entities"])
    return flat | {f"p({name})": p for name, p in row.get("probabilities", {}).items()}


def _encode_texts(tokenizer, chunk: list, max_length: int) -> dict:
    """Tokenise texts, or (text, pair) tuples as two segments, the way training did."""
    if isinstance(chunk[0], tuple):
        first, second = [pair[0] for pair in chunk], [pair[1] for pair in chunk]
    else:
        first, second = chunk, None
    return tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def _texts_from_file(path: Path, column: str, pair_column: str | None = None) -> list:
    if path.suffix.lower() == ".txt":
        if pair_column:
            raise UserError(
                f"--input: this run classifies text pairs; a .txt file holds single texts. Use a "
                f"csv/tsv/jsonl/parquet file with the columns '{column}' and '{pair_column}'"
            )
        if not path.is_file():
            raise UserError(f"--input: {_not_readable(path)}")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"--input: {path} is not UTF-8 text") from None
        if not lines:
            raise UserError(f"--input: {path} is empty")
        return lines
    frame = read_table(path, "--input")
    require_columns(frame, [column] + ([pair_column] if pair_column else []), "--input", path)
    texts = [str(value) for value in frame[column].tolist()]
    if not pair_column:
        return texts
    return list(zip(texts, [str(value) for value in frame[pair_column].tolist()], strict=True))


def _images_from_path(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        odd = next((p for p in files if not p.is_file()), None)
        if odd is not None:  # a pipe would block decoding, a device never end it
            raise UserError(f"--input: {_not_readable(odd)}")
        if files:
            return files
        raise UserError(f"--input: no images in {path}")
    raise UserError(f"--input: {_not_readable(path)}")


def _not_readable(path: Path) -> str:
    return not_a_regular_file(path) if path.exists() or path.is_symlink() else f"not found: {path}"
