"""What a run measures before it trains, kept on disk: the base model's scores and the feature-drift
probe's features. A second run of a config, or one that changes only how it trains (rate,
epochs, schedule), skips measuring a model it has measured already and starts training sooner.

The key is the content: a hash of the model as it stands before training (its architecture as
printed, every weight and buffer, the source of its class), of every batch the measurement reads,
of the config sections that shape the model but not its weights (``model``, ``strategy``,
compile and memory-format settings), of tunelab's own source and of what else a number depends
on (mixed precision, device, library versions). Anything that could change a number misses.
A batch is hashed as the rows it is made of, with the loader's index batches and its collate
settings, where those fix it (a loader that reads in order with PyTorch's or transformers'
padding collate); any other loader's batches are collated and hashed as the model receives them.
Values are hashed exactly (tensors and arrays by their bytes, JSON types as JSON); a value of any
other type makes the measurement uncacheable rather than risk a key that two inputs share.
Scores are stored as JSON and features as safetensors: nothing pickled is read, and a damaged
entry is measured again. Under several processes each one keys its own shard, and the cache is
keyed by every process's shard together (the scores are of all of them), and the cache is used
only when every process finds the entry, so they never disagree on whether to run the collective
evaluation.

Hand-written: no library keeps evaluation results keyed by a model's content.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler, default_collate

import tunelab
from tunelab.io import cache_dir, store_cache_entry

FORMAT = 1
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "numpy", "scikit-learn", "fairlearn", "safetensors")


class Unkeyable(TypeError):
    """A value the key cannot hash exactly: the measurement is made and not cached."""


class Remembered:
    """Measurements of one model before training, read from the cache or made and stored."""

    def __init__(
        self, model: torch.nn.Module, accelerator, enabled: bool = True, context=None, folder: Path | None = None
    ):
        """``context``: settings (JSON) that shape what the model computes without showing in its
        weights, such as a pooling mode."""
        self.model, self.accelerator, self.enabled, self.context = model, accelerator, enabled, context
        self.folder = folder or cache_dir() / "measured"
        self.from_cache: dict[str, bool] = {}

    @functools.cached_property
    def model_digest(self) -> str:
        return model_digest(self.model)

    @functools.cached_property
    def model_code_digest(self) -> str | None:
        return _source_digest(type(self.model))

    def scores(self, name: str, loaders: dict, extra, measure: Callable[[], dict]) -> dict:
        """``measure()``'s scores of ``loaders``; ``extra`` is whatever else they depend on (JSON)."""
        return self._remembered(name, loaders, extra, measure, ".json", _read_json, _write_json)

    def tensor(self, name: str, loaders: dict, measure: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self._remembered(name, loaders, None, measure, ".safetensors", _read_tensor, _write_tensor)

    def _remembered(self, name, loaders, extra, measure, suffix, read, write):
        if not self.enabled:
            return measure()
        key = self._key(name, loaders, extra)
        if key is None:
            self.from_cache[name] = False
            return measure()
        path = self.folder / f"{key}{suffix}"
        found = read(path)
        if _everywhere(found is not None, self.accelerator):
            self.from_cache[name] = True
            return found
        value = measure()
        self.from_cache[name] = False
        store_cache_entry(path, lambda temporary: write(temporary, value))
        return value

    def _key(self, name: str, loaders: dict, extra) -> str | None:
        """The entry's name, the same on every process; None where some value cannot be hashed."""
        accelerator = self.accelerator
        settings = {
            "format": FORMAT, "measurement": name, "extra": extra, "context": self.context, "code": code_digest(),
            "model_code": self.model_code_digest, "versions": {name: _version(name) for name in LIBRARIES},
            "device": accelerator.device.type,
            "mixed_precision": str(accelerator.mixed_precision), "processes": accelerator.num_processes,
        }  # fmt: skip
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(self.model_digest.encode())
        try:
            for split in sorted(loaders):
                digest.update(split.encode())
                _update_with_loader(digest, loaders[split])
            own, keyable = digest.digest(), True
        except Unkeyable:
            own, keyable = bytes(digest.digest_size), False
        if accelerator.num_processes == 1:
            return digest.hexdigest()[:32] if keyable else None
        # Each process hashed its own shard: the entry is named by all of them, in process order.
        mine = torch.tensor([int(keyable), *own], dtype=torch.int64, device=accelerator.device)
        every = accelerator.gather(mine).reshape(accelerator.num_processes, -1).tolist()
        if not all(row[0] for row in every):
            return None
        return hashlib.sha256(bytes(byte for row in every for byte in row[1:])).hexdigest()[:32]


@functools.cache
def code_digest() -> str:
    """tunelab's own source: a change to how anything is scored misses."""
    digest = hashlib.sha256()
    for path in sorted(Path(tunelab.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _source_digest(kind: type) -> str | None:
    """The file that defines the model's class (a user's ``module:function`` model included)."""
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(kind)).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return None


def _version(package: str) -> str | None:
    """The installed version (not whether this process has imported it yet)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_digest(model: torch.nn.Module) -> str:
    """A hash of the architecture as printed and of every weight and buffer."""
    digest = hashlib.sha256(str(model).encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        _update_with_tensor(digest, value)
    return digest.hexdigest()


def _update_with_loader(digest, loader) -> None:
    order = getattr(getattr(loader, "dataset", None), "order", None)  # LengthSorted: results go back in it
    if order is not None:
        digest.update(f"order:{json.dumps(list(order))}".encode())
    recipe = batch_recipe(loader)
    if recipe is None:
        digest.update(b"batches")
        for batch in loader:
            _update_with_value(digest, batch)
        return
    collate, index_batches = recipe
    digest.update(f"rows:{collate}".encode())
    dataset = loader.dataset
    for indices in index_batches:
        # Read as the DataLoader reads them.
        getitems = getattr(dataset, "__getitems__", None)
        rows = getitems(indices) if callable(getitems) else [dataset[index] for index in indices]
        digest.update(json.dumps(indices).encode())
        try:  # token ids: one call, and exact (no fallback for types JSON does not know)
            if not all(isinstance(row, Mapping) and all(isinstance(key, str) for key in row) for row in rows):
                raise TypeError
            digest.update(json.dumps(rows, sort_keys=True).encode())
        except (TypeError, ValueError):
            _update_with_value(digest, rows)


def batch_recipe(loader) -> tuple[str, list[list[int]]] | None:
    """What fixes ``loader``'s batches without collating them: its collate settings and the index
    batches it reads (this process's, under Accelerate), or None when they do not fix them (another
    collate or batch sampler, an iterable dataset, an order drawn at random, batches sent from
    process 0)."""
    collate = _collate_settings(getattr(loader, "collate_fn", None))
    if collate is None or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    if type(loader).__name__ == "DataLoaderDispatcher":  # Accelerate's: process 0 reads for all
        return None
    batches = loader.batch_sampler
    inner = getattr(batches, "batch_sampler", batches)  # Accelerate's BatchSamplerShard wraps the loader's own
    if type(inner) is not BatchSampler or type(inner.sampler) is not SequentialSampler:
        return None
    return collate, [list(indices) for indices in batches]


def _collate_settings(collate) -> str | None:
    """Everything a known collate's batches depend on besides their rows, or None for any other."""
    if collate is default_collate:
        return "default_collate"
    kind = type(collate)
    if f"{kind.__module__}.{kind.__qualname__}" != "transformers.data.data_collator.DataCollatorWithPadding":
        return None
    tokenizer = collate.tokenizer  # what its ``pad`` reads
    read = ("padding_side", "pad_token_id", "pad_token_type_id", "model_input_names", "model_max_length")
    settings = {name: getattr(tokenizer, name, None) for name in read} | {
        "padding": collate.padding, "max_length": collate.max_length, "multiple": collate.pad_to_multiple_of,
        "tensors": collate.return_tensors, "tokenizer": type(tokenizer).__name__,
    }  # fmt: skip
    return json.dumps(settings, sort_keys=True, default=str)


def _update_with_value(digest, value) -> None:
    """``value`` hashed exactly: a batch, a row, or anything in them."""
    if isinstance(value, torch.Tensor):
        _update_with_tensor(digest, value)
    elif isinstance(value, np.ndarray) and value.dtype != object:
        _update_with_tensor(digest, torch.from_numpy(np.ascontiguousarray(value)))
    elif isinstance(value, Mapping):  # Mapping, not dict: Hugging Face collators return a BatchEncoding
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(json.dumps(str(key)).encode() + f":{type(key).__name__}:".encode())
            _update_with_value(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(f"[{type(value).__name__}".encode())
        for item in value:
            _update_with_value(digest, item)
        digest.update(b"]")
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{json.dumps(value)},".encode())
    elif isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float, str)):
        digest.update(f"{value.dtype}:{json.dumps(value.item())},".encode())
    else:
        raise Unkeyable(type(value).__name__)


def _update_with_tensor(digest, value: torch.Tensor) -> None:
    digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
    # A copy: viewing a tensor's own storage as NumPy marks it non-resizable for good, and
    # quantization observers resize theirs in the next forward pass.
    copy = value.detach().to("cpu", copy=True).contiguous()
    digest.update(copy.reshape(-1).view(torch.uint8).numpy())


def _everywhere(found: bool, accelerator) -> bool:
    if accelerator.num_processes == 1:
        return found
    return bool(accelerator.gather(torch.tensor([found], device=accelerator.device)).all())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def _read_tensor(path: Path) -> torch.Tensor | None:
    try:
        return load_file(path).get("value")
    except (OSError, SafetensorError):
        return None


def _write_tensor(path: Path, value: torch.Tensor) -> None:
    save_file({"value": value.contiguous()}, str(path))
