"""Check the data before training on it: size, balance, empty rows, lengths, duplicates, leakage.

Near-duplicates are found with character n-gram TF-IDF vectors and a cosine radius search
(scikit-learn), which catches the edits that matter in practice (case, punctuation, a changed
word) in well under a second for ten thousand rows. Exact duplicates compare normalised text
(Unicode NFKC, case-folded, whitespace collapsed). Images are checked by decoding each file;
identical files are found by hashing their bytes, near copies (re-encoded, resized, brightened)
by perceptual hashes (data/near_images.py).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.near_images import fingerprint, near_pairs
from tunelab.data.readers import (
    check_label_types,
    group_values,
    image_folder_split,
    is_blank,
    is_number,
    label_text,
    read_table,
    require_columns,
)
from tunelab.errors import UserError

NEAR_SIMILARITY = 0.8  # cosine of character n-gram vectors: one word changed in eight scores ~0.88
HEAVY_IMBALANCE = 10.0  # largest class / smallest class
SHOWN = 5  # examples listed per finding


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def audit(
    config: RunConfig, tokenizer=None, features=None, probe_rows: int = 10_000, reference: str | None = None
) -> dict:
    """Every finding for every split of ``config.data``. ``tokenizer`` adds token lengths;
    ``features`` (texts -> base-model feature vectors) adds suspected label errors in train,
    probed on up to ``probe_rows`` rows drawn at random."""
    data = config.data
    paths = {role: getattr(data, role) for role in ("train", "validation", "test") if getattr(data, role)}
    if data.train == "digits":
        raise UserError("audit: the built-in digits need no audit; give data files or an image folder")
    splits = {role: _read(path, role, config) for role, path in paths.items()}
    rows_in_file = len(splits["train"]["inputs"])
    splits["train"], numbers = _limited(splits["train"], data.max_train_examples, config.seed)
    report = {"splits": {}, "leakage": {}, "warnings": []}
    for role, split in splits.items():
        found = _split_findings(split, tokenizer, data.max_length)
        report["splits"][role] = found
    if "train" in splits:
        for role in ("validation", "test"):
            if role in splits and splits[role]["kind"] == splits["train"]["kind"]:
                report["leakage"][role] = _leakage(splits["train"], splits[role])
    if numbers is not None:  # rows of the drawn sample -> rows of the file, as every finding names them
        _renumber(report["splits"]["train"], numbers)
        if splits["train"]["kind"] == "text":
            for found in report["leakage"].values():
                near = found["near"]["examples"]  # [their row, train's row, similarity]
                found["near"]["examples"] = [[row, numbers[train_row - 1], *rest] for row, train_row, *rest in near]
        report["splits"]["train"]["sampled"] = {"rows": len(numbers), "of": rows_in_file}
    if features is not None and splits["train"]["kind"] == "text":
        train = splits["train"]
        usable = [i for i, (t, y) in enumerate(zip(train["inputs"], train["labels"], strict=True)) if t.strip() and y]
        rng = np.random.default_rng(config.seed)
        chosen = [usable[i] for i in _sample(len(usable), probe_rows, rng)]
        train_features = features([train["inputs"][i] for i in chosen])
        report["label_errors"] = _label_errors(train, chosen, train_features, config.seed, numbers)
        labels = [train["labels"][i] for i in chosen]
        report["base_model"] = _base_model_read(train_features, labels, report["label_errors"], config, features)
        if reference:
            report["domain_gap"] = _domain_gap(train_features, reference, config, features, probe_rows, rng)
    report["warnings"] = warnings(report)
    return report


def _sample(count: int, limit: int, rng) -> list[int]:
    """Up to ``limit`` of ``range(count)``, drawn at random, in order."""
    return sorted(rng.choice(count, limit, replace=False).tolist()) if count > limit else list(range(count))


def _domain_gap(train_features, reference: str, config: RunConfig, features, probe_rows: int, rng) -> dict:
    from tunelab.data.label_issues import domain_gap

    frame = read_table(reference, "--reference")
    require_columns(frame, [config.data.text_column], "--reference", reference)
    texts = [str(v) for v in frame[config.data.text_column].tolist() if not is_blank(v)]
    references = [texts[i] for i in _sample(len(texts), probe_rows, rng)]
    return {"reference": str(reference)} | domain_gap(train_features, features(references), config.seed)


def _base_model_read(train_features, labels: list[str], errors: dict, config: RunConfig, features) -> dict:
    """How much of the task the base model already solves: majority class, zero-shot by label
    names, and the out-of-fold linear probe (the probe of the label-error search)."""
    from tunelab.data.label_issues import zero_shot

    counts = Counter(labels)
    read = {"majority_class": max(counts.values()) / len(labels), "rows": len(labels)}
    if "probe_accuracy" in errors:
        read["linear_probe"] = errors["probe_accuracy"]
    names = {str(key): value for key, value in config.data.label_names.items()}
    classes = sorted(counts)
    unnamed = [label for label in classes if label not in names and is_number(label)]
    if unnamed:
        read["zero_shot_skipped"] = (
            f"label '{unnamed[0]}' is a number, not a name; name the labels in data.label_names "
            "(e.g. {0: negative, 1: positive}) to score the base model zero-shot"
        )
    else:
        phrases = [names.get(label, label) for label in classes]
        read["zero_shot"] = zero_shot(train_features, labels, features(phrases))
        read["zero_shot_names"] = dict(zip(classes, phrases, strict=True))
    return read


def _label_errors(train: dict, chosen: list[int], train_features, seed: int, numbers: list[int] | None) -> dict:
    from tunelab.data.label_issues import label_suspects

    groups = [train["groups"][i] for i in chosen] if train.get("groups") else None
    found = label_suspects(train_features, [train["labels"][i] for i in chosen], seed, groups)
    if "skipped" in found:
        return found
    file_rows = numbers or range(1, len(train["inputs"]) + 1)  # a drawn sample's rows, or every row
    to_file_row = {position + 1: file_rows[chosen[position]] for position in range(len(chosen))}
    found["rows_probed"] = len(chosen)
    found["top_tenth"] = [to_file_row[row] for row in found["top_tenth"]]
    for suspect in found["suspects"]:
        suspect["text"] = train["inputs"][chosen[suspect["row"] - 1]][:200]
        suspect["row"] = to_file_row[suspect["row"]]
    return found


def _limited(split: dict, limit: int | None, seed: int) -> tuple[dict, list[int] | None]:
    """The train split cut to ``data.max_train_examples`` rows drawn at random, as training is,
    with the file's row number (1-based) of each kept row; unchanged (and None) below the limit."""
    count = len(split["inputs"])
    if not limit or count <= limit:
        return split, None
    chosen = sorted(np.random.default_rng(seed).choice(count, limit, replace=False).tolist())
    cut = {key: [value[i] for i in chosen] if isinstance(value, list) and len(value) == count else value
           for key, value in split.items()}  # fmt: skip
    return cut, [i + 1 for i in chosen]


def _renumber(found: dict, numbers: list[int]) -> None:
    """Turn the sample's row numbers in one split's findings into the file's."""

    def at(rows: list[int]) -> list[int]:
        return [numbers[row - 1] for row in rows]

    listed = [found[key] for key in ("missing_labels", "empty_text") if key in found]
    listed += [found["tokens"]["over_max_length"]] if "tokens" in found else []
    for finding in listed:
        finding["rows"] = at(finding["rows"])
    found["exact_duplicates"]["examples"] = [at(group) for group in found["exact_duplicates"]["examples"]]
    if "empty_text" in found:  # text: near pairs name rows (images name files)
        near = found["near_duplicates"]["examples"]
        found["near_duplicates"]["examples"] = [[*at([a, b]), *rest] for a, b, *rest in near]


def _read(path: str, role: str, config: RunConfig) -> dict:
    """Inputs and labels as written, blanks kept (they are findings here, not errors)."""
    where = f"data.{role}"
    if Path(path).is_dir():
        if config.data.group_column:
            raise UserError("data.group_column: image folders have no columns; groups apply to table data")
        split = image_folder_split(path, role)
        prints = [fingerprint(file) for file in split.inputs]  # each file read once, here
        return {"kind": "images", "inputs": split.inputs, "labels": split.labels, "path": str(path), "prints": prints}
    frame = read_table(path, where)
    data = config.data
    require_columns(frame, [data.text_column, data.label_column], where, path)
    check_label_types(frame[data.label_column].tolist(), data.label_column, where, path)
    texts = ["" if is_blank(value) else str(value) for value in frame[data.text_column].tolist()]
    labels = ["" if is_blank(value) else label_text(value) for value in frame[data.label_column].tolist()]
    found = {"kind": "text", "inputs": texts, "labels": labels, "path": str(path)}
    if data.group_column:
        require_columns(frame, [data.group_column], where, path)
        found["groups"] = group_values(frame[data.group_column].tolist())
    return found


def _split_findings(split: dict, tokenizer, max_length: int) -> dict:
    labels = Counter(label for label in split["labels"] if label)
    found = {
        "path": split["path"],
        "rows": len(split["inputs"]),
        "labels": dict(sorted(labels.items(), key=lambda item: -item[1])),
        "imbalance_ratio": imbalance_ratio(labels),
        "missing_labels": _rows(i for i, label in enumerate(split["labels"]) if not label),
    }
    if split.get("groups"):
        found["groups"] = _group_counts(split["groups"], split["labels"])
    if split["kind"] == "images":
        files, prints = split["inputs"], split["prints"]
        found["undecodable"] = [str(f) for f, p in zip(files, prints, strict=True) if not p.decodes]
        found["exact_duplicates"] = _groups(p.sha256 for p in prints)
        found["near_duplicates"] = _near_images(split)
        return found
    texts = split["inputs"]
    found["empty_text"] = _rows(i for i, text in enumerate(texts) if not text.strip())
    found["exact_duplicates"] = _groups(normalise(t) if t.strip() else None for t in texts)
    found["near_duplicates"] = _near_pairs(texts, texts)
    if tokenizer is not None:
        lengths = np.array(tokenizer(texts, truncation=False, verbose=False, return_length=True)["length"])
        found["tokens"] = {
            "mean": float(lengths.mean()),
            "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "max_length": max_length,
            "over_max_length": _rows(np.flatnonzero(lengths > max_length).tolist()),
            "histogram": _histogram(lengths),
        }
    return found


def _group_counts(groups: list[str], labels: list[str]) -> dict:
    """Rows and label distribution of each group, largest group first."""
    by_group: dict[str, Counter] = {}
    for group, label in zip(groups, labels, strict=True):
        by_group.setdefault(group, Counter())[label or "(missing)"] += 1
    ordered = sorted(by_group.items(), key=lambda item: -sum(item[1].values()))
    return {group: {"rows": sum(counts.values()), "labels": dict(counts)} for group, counts in ordered}


def _histogram(lengths: np.ndarray) -> dict:
    counts, edges = np.histogram(lengths, bins=min(30, max(1, int(lengths.max() - lengths.min()) + 1)))
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _rows(indices) -> dict:
    """A count and the first few data rows (1-based, as a spreadsheet shows them after the header)."""
    indices = list(indices)
    return {"count": len(indices), "rows": [i + 1 for i in indices[:SHOWN]]}


def _groups(keys) -> dict:
    """Rows whose keys repeat: how many groups, how many extra copies, the first groups' rows."""
    where: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            where.setdefault(key, []).append(index + 1)
    groups = [rows for rows in where.values() if len(rows) > 1]
    return {"groups": len(groups), "extra_copies": sum(len(g) - 1 for g in groups), "examples": groups[:SHOWN]}


def _near_pairs(texts: list[str], others: list[str], same: bool = True) -> dict:
    """Pairs of rows at cosine similarity >= NEAR_SIMILARITY that are not exact duplicates."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    keep = [i for i, t in enumerate(texts) if t.strip()]
    keep_other = keep if same else [i for i, t in enumerate(others) if t.strip()]
    if not keep or not keep_other:
        return {"count": 0, "rows": 0, "examples": []}
    normal = {i: normalise(texts[i]) for i in keep}  # once per text, for the vectors and the exact-match test
    normal_other = normal if same else {i: normalise(others[i]) for i in keep_other}
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=False, sublinear_tf=True)
    corpus = [normal[i] for i in keep] + ([] if same else [normal_other[i] for i in keep_other])
    matrix = vectorizer.fit_transform(corpus)
    query = matrix[: len(keep)]
    index = query if same else matrix[len(keep) :]
    search = NearestNeighbors(radius=1 - NEAR_SIMILARITY, metric="cosine").fit(index)
    distances, neighbours = search.radius_neighbors(query)
    pairs = []
    for a, (found_d, found_n) in enumerate(zip(distances, neighbours, strict=True)):
        for distance, b in zip(found_d, found_n, strict=True):
            first, second = keep[a], keep_other[b]
            if (same and first >= second) or normal[first] == normal_other[second]:
                continue
            pairs.append((first + 1, second + 1, round(1 - float(distance), 3)))
    pairs.sort(key=lambda pair: -pair[2])
    return _pairs_found(pairs, [list(pair) for pair in pairs[:SHOWN]])


def _pairs_found(pairs: list[tuple], examples: list) -> dict:
    """Near pairs as reported: how many pairs, how many distinct first-side rows (for leakage: rows
    of validation/test with a near copy in train), and the closest few."""
    return {"count": len(pairs), "rows": len({pair[0] for pair in pairs}), "examples": examples}


def _leakage(train: dict, other: dict) -> dict:
    """Rows of ``other`` that also appear in train, exactly or nearly."""
    if train["kind"] == "images":
        seen = {p.sha256 for p in train["prints"]}
        exact = _rows(i for i, p in enumerate(other["prints"]) if p.sha256 in seen)
        return {"exact": exact, "near": _near_images(other, train)}
    seen = {_text_key(t) for t in train["inputs"] if t.strip()}
    exact = _rows(i for i, t in enumerate(other["inputs"]) if t.strip() and _text_key(t) in seen)
    return {"exact": exact, "near": _near_pairs(other["inputs"], train["inputs"], same=False)}


def _near_images(split: dict, other: dict | None = None) -> dict:
    """Pairs of near-copy images within ``split`` (or between it and ``other``) as their files and
    similarity: the shape of text's near-duplicate pairs, with files for rows."""
    pairs = near_pairs(split["prints"], other["prints"] if other else None)
    other_files = (other or split)["inputs"]
    examples = [[str(split["inputs"][a]), str(other_files[b]), similarity] for a, b, similarity in pairs[:SHOWN]]
    return _pairs_found(pairs, examples)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def warnings(report: dict) -> list[str]:
    """What a user must hear before training: leakage, heavy imbalance, truncation, bad rows."""
    said = []
    for role, found in report["leakage"].items():
        exact, near = found["exact"]["count"], found.get("near", {}).get("rows", 0)
        if exact or near:
            said.append(f"leakage: {exact} {role} rows also in train exactly, {near} nearly")
    for role, found in report["splits"].items():
        said += _imbalance_warning(role, found["imbalance_ratio"])
        over = found.get("tokens", {}).get("over_max_length", {}).get("count", 0)
        if over:
            said.append(f"{role}: {over} rows are longer than max_length and will be truncated")
        for key, what in (("empty_text", "empty texts"), ("missing_labels", "missing labels")):
            if found.get(key, {}).get("count"):
                said.append(f"{role}: {found[key]['count']} {what}")
        if found.get("undecodable"):
            said.append(f"{role}: {len(found['undecodable'])} images cannot be decoded")
    return said


def quick_checks(splits: dict, classes: bool = True) -> list[str]:
    """The cheap part of the audit, run before every training run: train rows repeated in
    validation or test, and (for a task with ``classes``) heavy class imbalance. ``splits`` maps
    role -> RawSplit."""
    said = []
    train = splits.get("train")
    if train is None or len(train.inputs) == 0 or not isinstance(train.inputs[0], str | tuple | Path):
        return said  # built-in data (arrays) is known to be clean
    key = _file_hash if isinstance(train.inputs[0], Path) else _text_key
    seen = {key(item) for item in train.inputs}
    for role in ("validation", "test"):
        if role in splits:
            leaked = sum(1 for item in splits[role].inputs if key(item) in seen)
            if leaked:
                said.append(
                    f"leakage: {leaked} of {len(splits[role].inputs)} {role} rows also appear in train, "
                    "so their scores overstate what the model learned (`tunelab audit` lists them)"
                )
    if classes:
        said += _imbalance_warning("train", imbalance_ratio(Counter(train.labels)))
    return said


def imbalance_ratio(counts: Counter) -> float | None:
    """Rows of the largest class over rows of the smallest."""
    return max(counts.values()) / min(counts.values()) if counts else None


def _imbalance_warning(role: str, ratio: float | None) -> list[str]:
    if ratio is None or ratio < HEAVY_IMBALANCE:
        return []
    return [f"{role}: classes are imbalanced {ratio:.0f}:1 (largest to smallest)"]


def _text_key(item) -> str:
    return " \t ".join(normalise(part) for part in item) if isinstance(item, tuple) else normalise(item)
