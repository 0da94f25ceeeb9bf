"""Data: read every split, map labels, hold out validation, then tokenise or decode.

Two stages because the label count must be known before the model is built, and the
model's own tokenizer or image processor is needed to prepare the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset

from tunelab.config import RunConfig
from tunelab.data import digits
from tunelab.data.augment import AugmentedImages
from tunelab.data.images import load_images
from tunelab.data.labels import LabelMap
from tunelab.data.prepare import prepare_split
from tunelab.data.readers import RawSplit
from tunelab.data.token_cache import tokenizer_fingerprint
from tunelab.errors import UserError
from tunelab.tasks import get_task

BUILTIN_DIGITS = "digits"


@dataclass
class RawData:
    splits: dict[str, RawSplit]
    labels: LabelMap
    channels: int = 3
    notes: list[str] = field(default_factory=list)
    preparation: dict = field(default_factory=dict)  # per split: what each clean-up step changed


@dataclass
class PreparedData:
    datasets: dict[str, Dataset]
    labels: LabelMap
    truncated: dict[str, int]
    notes: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)  # split -> each example's group, when given
    tokens_from_cache: dict[str, bool] = field(default_factory=dict)  # text: split -> read from the token cache


def read_data(config: RunConfig) -> RawData:
    """Read train/validation/test, hold out validation if needed, build the label map."""
    data = config.data
    if data.train == BUILTIN_DIGITS:
        return _read_digits(config)
    task = get_task(config)
    splits = {"train": task.read_split(data.train, "train", config)}
    for role in ("validation", "test"):
        path = getattr(data, role)
        if path:
            splits[role] = task.read_split(path, role, config)
    preparation = {}
    for role, split in splits.items():
        if task.reads(config) == "image" or not split.inputs:
            continue  # images: prepared by their transform
        splits[role], preparation[role] = prepare_split(split, data.prepare)
        if not splits[role].inputs:
            raise UserError(f"data.{role}: no rows left after data.prepare (every row was empty or a duplicate)")
    notes = []
    if "validation" not in splits:
        stratified = task.has_classes
        held = _hold_out(splits["train"], data.validation_fraction, config.seed, stratified)
        splits["train"], splits["validation"] = held
        notes.append(f"validation: {data.validation_fraction:.0%} of train held out{' (stratified)' * stratified}")
    if data.max_train_examples and len(splits["train"].labels) > data.max_train_examples:
        splits["train"] = _subsample(splits["train"], data.max_train_examples, config.seed, task.has_classes)
        notes.append(f"train: limited to {data.max_train_examples} examples")
    if data.max_eval_examples:
        for role in ("validation", "test"):
            if role in splits and len(splits[role].labels) > data.max_eval_examples:
                splits[role] = _subsample(splits[role], data.max_eval_examples, config.seed, task.has_classes)
    if config.train.resample:
        splits["train"], preparation.setdefault("train", {})["resample"] = _resample(
            splits["train"], config.train.resample, config.seed
        )
    splits = {name: splits[name] for name in ("train", "validation", "test") if name in splits}
    labels = task.targets(splits["train"].labels, config)
    for name, split in splits.items():
        labels.encode(split.labels, f"data.{name}")  # fail early on a class train never saw, or a bad number
    if data.augment.enabled:  # applied as train is prepared, drawn afresh each epoch
        preparation.setdefault("train", {})["augment"] = data.augment.model_dump()
    return RawData(splits, labels, notes=notes, preparation=preparation)


def prepare_data(raw: RawData, loaded, config: RunConfig) -> PreparedData:
    """Turn raw splits into datasets with the model's tokenizer or image transform."""
    datasets, truncated, cached = {}, {}, {}
    task = get_task(config)
    reads = task.reads(config)
    text = reads == "text" and config.data.cache
    fingerprint = tokenizer_fingerprint(loaded.tokenizer) if text else None  # once, for every split
    for name, split in raw.splits.items():
        ids = raw.labels.encode(split.labels, f"data.{name}")
        if config.data.train == BUILTIN_DIGITS:
            datasets[name] = digits.as_dataset(split.inputs, ids)
        elif reads == "text":
            tokenized = task.text_dataset(loaded.tokenizer, split.inputs, ids, raw.labels, config, fingerprint)
            datasets[name], truncated[name], cached[name] = tokenized
        elif name == "train" and config.data.augment.enabled:
            augment, seed = config.data.augment, config.seed
            datasets[name] = AugmentedImages.load(split.inputs, ids, loaded.image_transform, augment, seed, name)
        else:
            datasets[name] = load_images(split.inputs, ids, loaded.image_transform, name)
    groups = {name: split.groups for name, split in raw.splits.items() if split.groups is not None}
    return PreparedData(datasets, raw.labels, truncated, raw.notes, groups, cached)


def _read_digits(config: RunConfig) -> RawData:
    data = config.data
    task = get_task(config)
    if task.reads(config) != "image" or not task.has_classes:  # the data names its task's kind
        raise UserError(f"data.train: the built-in 'digits' is labelled images; task: {config.task} reads no such rows")
    for role in ("validation", "test"):
        if getattr(data, role):
            raise UserError(f"data.{role}: the built-in 'digits' makes its own splits; remove this key")
    parts = digits.digits_splits(
        data.digits_classes,
        data.digits_train_per_class,
        data.digits_validation_per_class,
        config.seed,
        data.digits_pretext,
    )
    splits = {name: RawSplit(name, images, names, "sklearn digits") for name, (images, names) in parts.items()}
    labels = LabelMap.from_labels(splits["train"].labels)
    return RawData(splits, labels, channels=1)


def _hold_out(split: RawSplit, fraction: float, seed: int, stratified: bool = True) -> tuple[RawSplit, RawSplit]:
    if not stratified:  # numbers, not classes: a plain seeded split
        return _plain_split(split, fraction, seed)
    indices = np.arange(len(split.labels))
    counts = np.unique(split.labels, return_counts=True)[1]
    stratify = split.labels if counts.min() >= 2 else None
    from sklearn.model_selection import train_test_split  # here: importing it costs a second

    # Stratified, every class needs a row on each side: a small file gets that many validation rows.
    held = max(math.ceil(fraction * len(indices)), len(counts)) if stratify is not None else fraction
    if stratify is not None and len(indices) - held < len(counts):
        held = fraction  # cannot be met: the check below names the class that is lost
        stratify = None
    try:
        train_idx, val_idx = train_test_split(indices, test_size=held, random_state=seed, stratify=stratify)
    except ValueError as error:
        raise UserError(f"data.validation_fraction: cannot hold out {fraction} of train: {error}") from None
    left = {split.labels[i] for i in train_idx}
    lost = [label for label in dict.fromkeys(split.labels) if label not in left]
    if lost:
        raise UserError(
            f"data.train: too few rows to hold out a validation split ({len(indices)} rows, {len(counts)} classes: "
            f"class {lost[0]!r} would be left only in validation); add rows or give data.validation"
        )
    return split.subset(train_idx, "train"), split.subset(val_idx, "validation")


def _resample(split: RawSplit, method: str, seed: int) -> tuple[RawSplit, dict]:
    """Every class of train brought to the size of the largest (oversample, rows drawn again with
    replacement) or of the smallest (undersample, rows drawn without), with the counts recorded."""
    rng = np.random.default_rng(seed)
    labels = np.array(split.labels)
    rows_by_class = {label: np.flatnonzero(labels == label) for label in sorted(set(split.labels))}
    sizes = [len(rows) for rows in rows_by_class.values()]
    target = max(sizes) if method == "oversample" else min(sizes)
    chosen = []
    for rows in rows_by_class.values():
        if method == "oversample":
            chosen += [*rows, *rng.choice(rows, target - len(rows), replace=True)]
        else:
            chosen += list(rng.choice(rows, target, replace=False))
    record = {
        "method": method,
        "rows_in": len(labels),
        "rows_out": len(chosen),
        "per_class_before": {label: len(rows) for label, rows in rows_by_class.items()},
        "per_class_after": target,
    }
    return split.subset(np.sort(chosen)), record


def _plain_split(split: RawSplit, fraction: float, seed: int) -> tuple[RawSplit, RawSplit]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(split.labels))
    if len(indices) < 2:
        raise UserError(f"data.train: too few rows to hold out a validation split ({len(indices)} rows)")
    held = max(1, math.ceil(fraction * len(indices)))
    train_idx, val_idx = train_test_split(indices, test_size=held, random_state=seed)
    return split.subset(train_idx, "train"), split.subset(val_idx, "validation")


def _subsample(split: RawSplit, size: int, seed: int, stratified: bool = True) -> RawSplit:
    indices = np.arange(len(split.labels))
    stratify = None
    if stratified:  # classes, one a row (a tag sequence or a number is no stratum)
        counts = np.unique(split.labels, return_counts=True)[1]
        stratify = split.labels if counts.min() >= 2 and size >= len(counts) else None
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(indices, train_size=size, random_state=seed, stratify=stratify)
    return split.subset(np.sort(chosen))
