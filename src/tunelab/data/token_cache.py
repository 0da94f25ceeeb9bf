"""Tokenised text kept on disk, so a second run of a config (a compare strategy, a tuning trial)
skips tokenising.

The key is a hash of the tokenizer (its whole serialised vocabulary and rules, not its name) and
of the rows and ``max_length``, so any change to either misses. Each column of token ids is stored
as one flat int32 tensor with row offsets, in safetensors: nothing pickled is ever read. A damaged
or unreadable entry is simply tokenised again. Hand-written because ``datasets``' own cache is
keyed by its Arrow tables and would add a dependency for this one use.
"""

from __future__ import annotations

import hashlib
import json
from itertools import chain
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunelab.data.text import TokenizedDataset, tokenize
from tunelab.io import cache_dir, store_cache_entry

FORMAT = 1


def cached_tokenize(
    tokenizer, inputs: list, labels: list[int], max_length: int, folder: Path | None = None, fingerprint=None
) -> tuple[TokenizedDataset, int, bool]:
    """``tokenize``'s result, read from the cache when it holds it. Returns (dataset, truncated,
    whether it came from the cache). ``fingerprint``: the tokenizer's, when the caller has it (it
    serialises the whole vocabulary: taken once for all of a run's splits)."""
    key = _key(fingerprint or tokenizer_fingerprint(tokenizer), inputs, max_length)
    path = (folder or cache_dir() / "tokens") / f"{key}.safetensors"
    found = _read(path, len(inputs))
    if found is not None:
        encodings, truncated = found
        return TokenizedDataset(encodings, labels), truncated, True
    dataset, truncated = tokenize(tokenizer, inputs, labels, max_length)
    _write(path, dataset.encodings, truncated)
    return dataset, truncated, False


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Its truncation and padding are the settings of the last call, not rules of the tokenizer.
        serialised = json.loads(backend.to_str())
        rules = json.dumps({key: value for key, value in serialised.items() if key not in ("truncation", "padding")})
    else:
        rules = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    settings = {"class": type(tokenizer).__name__, "padding_side": tokenizer.padding_side}
    return hashlib.sha256((rules + json.dumps(settings)).encode()).hexdigest()


def _key(fingerprint: str, inputs: list, max_length: int) -> str:
    digest = hashlib.sha256(f"{FORMAT}:{fingerprint}:{max_length}".encode())
    for row in inputs:  # row by row: a list of 67k sentences need not become one string
        digest.update(json.dumps(row, ensure_ascii=False).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def _read(path: Path, rows: int) -> tuple[dict[str, list], int] | None:
    if not path.is_file():
        return None
    try:
        stored = load_file(path)
    except (OSError, SafetensorError):
        return None
    offsets = stored.pop("offsets", None)
    truncated = stored.pop("truncated", None)
    if offsets is None or truncated is None or len(offsets) != rows + 1:
        return None
    bounds = offsets.tolist()
    encodings = {}
    for name, flat in stored.items():
        values = flat.tolist()
        encodings[name] = [values[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    return encodings, int(truncated)


def _write(path: Path, encodings: dict[str, list], truncated: int) -> None:
    lengths = [len(ids) for ids in encodings["input_ids"]]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    tensors = {name: torch.tensor(list(chain.from_iterable(ids)), dtype=torch.int32) for name, ids in encodings.items()}
    tensors |= {"offsets": offsets, "truncated": torch.tensor(truncated)}
    store_cache_entry(path, lambda temporary: save_file(tensors, temporary))
