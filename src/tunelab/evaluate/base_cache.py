"""The base model's scores kept on disk, so a second run of a config (or the next strategy of a
compare) does not score the same untrained model on the same rows again.

The key hashes exactly what the scores depend on: every weight and buffer of the model as it is
scored (pretrained body and freshly drawn head), the rows of each split (token ids and labels),
the batch size, precision and the library versions. Any change misses. Only tokenised text is
cached: hashing decoded images would cost about what scoring them does.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch.utils.data import Subset

from tunelab.engine.data_loading import LengthSorted
from tunelab.io import cache_dir, read_json_object, write_json

FORMAT = 1


def base_scores_key(model: torch.nn.Module, loaders: dict, settings: dict) -> str | None:
    """The cache key, or None when some split is not tokenised text."""
    digest = hashlib.sha256(json.dumps([FORMAT, _versions(), settings], sort_keys=True, default=str).encode())
    for name, loader in loaders.items():
        rows = _rows_digest(getattr(getattr(loader, "loader", loader), "dataset", None))
        if rows is None:
            return None
        digest.update(f"{name}:{rows}".encode())
    digest.update(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous()
        digest.update(str((flat.dtype, tuple(flat.shape))).encode())
        digest.update(memoryview(flat.view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()[:32]


def read_base_scores(key: str) -> dict | None:
    path = cache_dir() / "base-scores" / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return read_json_object(path)
    except Exception:  # a damaged entry is scored again
        return None


def write_base_scores(key: str, scores: dict) -> None:
    folder = cache_dir() / "base-scores"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{key}.json", scores)
    except OSError:  # a full or read-only cache only costs the next run its scoring
        pass


def _rows_digest(dataset) -> str | None:
    if isinstance(dataset, LengthSorted):
        return _rows_digest(dataset.dataset)
    if isinstance(dataset, Subset):
        inner = _rows_digest(dataset.dataset)
        return None if inner is None else hashlib.sha256(f"{inner}:{list(dataset.indices)}".encode()).hexdigest()
    encodings, labels = getattr(dataset, "encodings", None), getattr(dataset, "labels", None)
    if not isinstance(encodings, dict) or labels is None:
        return None
    return hashlib.sha256(json.dumps([encodings, list(labels)], sort_keys=True).encode()).hexdigest()


def _versions() -> dict:
    import transformers

    from tunelab import __version__

    return {"tunelab": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
