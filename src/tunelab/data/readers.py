"""Read tables (csv, tsv, jsonl, parquet) and image folders into plain Python lists.

Every failure a user can cause (missing file, empty file, wrong encoding, missing column,
unparseable content) becomes a one-line :class:`UserError` naming the file.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunelab.errors import UserError, first_line

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class RawSplit:
    """Inputs (texts, text pairs or image paths) with their labels as written in the file."""

    name: str
    inputs: list
    labels: list
    source: str
    groups: list[str] | None = None  # data.group_column, for per-group (fairness) metrics

    def subset(self, indices, name: str | None = None) -> RawSplit:
        """The rows at ``indices``, in that order, inputs, labels and groups together."""
        indices = list(indices)
        tensor = hasattr(self.inputs, "index_select")  # the built-in digits are a tensor of images
        inputs = self.inputs[indices] if tensor else [self.inputs[i] for i in indices]
        groups = None if self.groups is None else [self.groups[i] for i in indices]
        return RawSplit(name or self.name, inputs, [self.labels[i] for i in indices], self.source, groups)


def read_table(path: str | Path, where: str) -> pd.DataFrame:
    """Read one table; ``where`` names what the user gave (``data.train``, ``--input``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{where}: file not found: {path}")
    if path.is_dir():
        raise UserError(f"{where}: {path} is a folder; text data must be a csv/tsv/jsonl/parquet file")
    if not path.is_file():  # a FIFO would block the read, a device would never end it
        raise UserError(f"{where}: {not_a_regular_file(path)}; give a data file")
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"{where}: unsupported file type '{path.suffix}' ({path}); use one of {', '.join(sorted(TABLE_SUFFIXES))}"
        )
    if path.stat().st_size == 0:
        raise UserError(f"{where}: {path} is empty")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        else:
            frame = pd.read_csv(
                path,
                sep="\t" if kind == "tsv" else ",",
                encoding="utf-8",
                dtype=str,
                keep_default_na=False,
                quoting=3 if kind == "tsv" else 0,
            )
    except UnicodeDecodeError as error:
        raise UserError(f"{where}: {path} is not UTF-8 text (bad byte at offset {error.start})") from None
    except RecursionError:
        raise UserError(f"{where}: cannot parse {path}: a value is nested too deeply") from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        if kind == "jsonl":
            _name_bad_json_line(path, where)
        raise UserError(f"{where}: cannot parse {path}: {first_line(error)}") from None
    if frame.empty:
        raise UserError(f"{where}: {path} has no data rows")
    _no_nul_bytes(frame, where, path)
    return frame


def _no_nul_bytes(frame: pd.DataFrame, where: str, path: Path) -> None:
    """Text never holds a NUL byte: a cell with one is a binary file renamed, or a damaged one."""
    for column in frame.columns:
        found = frame[column].map(lambda value: isinstance(value, str) and "\x00" in value).to_numpy().nonzero()[0]
        if len(found):
            raise UserError(f"{where}: data row {found[0] + 1} of {path} holds a NUL byte in '{column}'; is it text?")


def _name_bad_json_line(path: Path, where: str) -> None:
    """Raise naming the first line of a JSONL file that is not a JSON object."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: {path} line {number} is not valid JSON ({error.msg})") from None
            except RecursionError:
                raise UserError(f"{where}: {path} line {number} is nested too deeply") from None
            if not isinstance(parsed, dict):
                raise UserError(f"{where}: {path} line {number} is not a JSON object") from None


def check_label_types(labels: list, label_column: str, where: str, path) -> None:
    """A label column holds numbers or words, not both: "1" beside "pos" is almost always a mistake."""
    kinds = {}
    for row, label in enumerate(labels, start=1):
        if isinstance(label, list | dict | tuple | set) or _not_a_class(label):
            shown = repr(label) if len(repr(label)) <= 40 else repr(label)[:37] + "..."
            raise UserError(
                f"{where}: column '{label_column}' of {path} holds {shown} at data row {row}; a label is one "
                "class name or number per row"
            )
        if is_blank(label):
            continue
        kinds.setdefault("number" if is_number(label) else "text", row)
    if len(kinds) > 1:
        raise UserError(
            f"{where}: column '{label_column}' of {path} mixes numbers (first at data row {kinds['number']}) "
            f"and text (first at data row {kinds['text']}); use one kind of label"
        )
    if "number" in kinds:
        _one_spelling_per_number(labels, label_column, where, path)


def _one_spelling_per_number(labels: list, label_column: str, where: str, path) -> None:
    """ "1" and "1.0" (a JSONL file may hold both) would be two classes; they are almost surely one."""
    spellings: dict[float, dict[str, int]] = {}
    for row, label in enumerate(labels, start=1):
        if not is_blank(label):
            spellings.setdefault(float(str(label)), {}).setdefault(label_text(label), row)
    for found in spellings.values():
        if len(found) > 1:
            (first, row), (second, other) = list(found.items())[:2]
            raise UserError(
                f"{where}: column '{label_column}' of {path} writes one number two ways ('{first}' at data row "
                f"{row}, '{second}' at data row {other}), which would make two classes; write it one way"
            )


def _not_a_class(label: object) -> bool:
    """NaN or infinity written out as a label ("NaN" in JSONL): a missing value, not a class."""
    if isinstance(label, float | int) or label is None:  # bool is an int
        return isinstance(label, float) and label in (float("inf"), float("-inf"))
    return str(label).strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity")


def is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def require_columns(frame: pd.DataFrame, columns: list[str], where: str, path) -> None:
    for column in columns:
        if column not in frame.columns:
            available = ", ".join(map(str, frame.columns))
            raise UserError(f"{where}: column '{column}' not in {path}; columns are: {available}")


def table_split(
    path: str | Path,
    role: str,
    text_column: str,
    label_column: str,
    pair_column: str | None = None,
    where: str | None = None,
    allow_blank: bool = False,
    group_column: str | None = None,
    groups_required: bool = True,
    classes: bool = True,
    image_column: str | None = None,
) -> RawSplit:
    """One table as a split; a ``group_column`` the file lacks is an error unless not ``groups_required``.
    ``classes``: the labels name classes (checked for one kind and one spelling); otherwise they are
    numbers, which the task reads. ``image_column``: inputs are image files named relative to the table."""
    where = where or f"data.{role}"
    frame = read_table(path, where)
    if group_column and not groups_required and group_column not in frame.columns:
        group_column = None
    optional = [column for column in (pair_column, group_column) if column]
    require_columns(frame, [image_column or text_column, label_column, *optional], where, path)
    if image_column:
        names = _text_column(frame, image_column, where, path)
        inputs = [Path(path).parent / name for name in names]
    else:
        texts = _text_column(frame, text_column, where, path, allow_blank)
        pairs = _text_column(frame, pair_column, where, path, allow_blank) if pair_column else None
        inputs = list(zip(texts, pairs, strict=True)) if pairs else texts
    labels = frame[label_column].tolist()
    if classes:
        check_label_types(labels, label_column, where, path)
    missing = [row for row, label in enumerate(labels) if is_blank(label)]
    if missing:
        raise UserError(
            f"{where}: {len(missing)} row(s) of {path} have no '{label_column}' (first: data row {missing[0] + 1})"
        )
    groups = group_values(frame[group_column].tolist()) if group_column else None
    return RawSplit(role, inputs, [label_text(label) for label in labels], str(path), groups)


MISSING_GROUP = "(missing)"


def group_values(values: list) -> list[str]:
    """Group names as text; a blank cell is its own group rather than an error."""
    return [MISSING_GROUP if is_blank(value) else label_text(value) for value in values]


def _text_column(frame: pd.DataFrame, column: str, where: str, path: Path, allow_blank: bool = False) -> list[str]:
    values = frame[column].tolist()
    blank = [row for row, value in enumerate(values) if is_blank(value)]
    if allow_blank:
        return ["" if is_blank(value) else str(value) for value in values]
    if blank:
        raise UserError(
            f"{where}: {len(blank)} row(s) of {path} have an empty '{column}' (first: data row {blank[0] + 1}); "
            "data.prepare.drop_empty: true drops them"
        )
    return [str(value) for value in values]


INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}  # controls, zero-width and other format marks, spaces


def is_blank(value: object) -> bool:
    """None, NaN, or text with nothing visible in it (spaces, tabs, zero-width spaces, byte-order marks)."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    text = str(value).strip()
    if not text or (text.isascii() and text.isprintable()):  # the common cases, without a look at each letter
        return not text
    return all(unicodedata.category(letter) in INVISIBLE or letter.isspace() for letter in text)


def label_text(label: object) -> str:
    # 1 and 1.0 and "1" name the same class whichever reader produced them.
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label).strip()


def not_a_regular_file(path: Path) -> str:
    """What is wrong with a path that exists as a name but is no file to read."""
    return f"{path} is not a regular file ({'a pipe or a device' if path.exists() else 'a broken link'})"


def image_folder_split(path: str | Path, role: str, where: str | None = None) -> RawSplit:
    """One sub-folder per class; every image file inside it is an example of that class."""
    where = where or f"data.{role}"
    root = Path(path)
    if not root.exists():
        raise UserError(f"{where}: folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{where}: {root} is not a folder; images need one sub-folder per class")
    inputs, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.suffix.lower() not in IMAGE_SUFFIXES or file.is_dir():
                continue
            if not file.is_file():  # a pipe would block decoding, a device never end it
                raise UserError(f"{where}: {not_a_regular_file(file)}")
            inputs.append(file)
            labels.append(class_dir.name)
    if not inputs:
        raise UserError(f"{where}: no images found in class sub-folders of {root}")
    return RawSplit(role, inputs, labels, str(root))
