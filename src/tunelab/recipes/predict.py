"""`tunelab predict`: labels and probabilities for new texts or images from a finished run."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.data.images import open_image
from tunelab.data.readers import IMAGE_SUFFIXES, read_table
from tunelab.errors import UserError
from tunelab.evaluate import output_logits
from tunelab.recipes.evaluate import load_run
from tunelab.recipes.runtime import quiet_libraries

BATCH = 64


def run_prediction(run_dir: Path, input_path: str | None, texts: list[str] | None) -> list[dict]:
    quiet_libraries()
    config, loaded = load_run(run_dir)
    if config.task == "text-classification":
        inputs = texts if texts else _texts_from_file(Path(input_path), config.data.text_column)
        encode = lambda chunk: loaded.tokenizer(  # noqa: E731
            chunk, truncation=True, max_length=config.data.max_length, padding=True, return_tensors="pt"
        )
    else:
        if texts:
            raise UserError("--text: this run classifies images; use --input with an image or a folder")
        inputs = _images_from_path(Path(input_path))
        encode = lambda chunk: {"pixel_values": loaded.image_transform([open_image(p, "input") for p in chunk])}  # noqa: E731
    labels = list(loaded.labels)
    model = loaded.model.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(inputs), BATCH):
            chunk = inputs[start : start + BATCH]
            probabilities = torch.softmax(output_logits(model(**encode(chunk))).float(), dim=-1)
            best = probabilities.max(dim=-1)
            for item, index, probability in zip(chunk, best.indices.tolist(), best.values.tolist(), strict=True):
                rows.append({"input": str(item), "label": labels[index], "probability": probability})
    return rows


def _texts_from_file(path: Path, column: str) -> list[str]:
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"--input: file not found: {path}")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"--input: {path} is not UTF-8 text") from None
        if not lines:
            raise UserError(f"--input: {path} is empty")
        return lines
    frame = read_table(path, "input")
    if column not in frame.columns:
        raise UserError(f"--input: column '{column}' not in {path}; columns are: {', '.join(map(str, frame.columns))}")
    return [str(value) for value in frame[column].tolist()]


def _images_from_path(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise UserError(f"--input: no images in {path}")
    raise UserError(f"--input: not found: {path}")
