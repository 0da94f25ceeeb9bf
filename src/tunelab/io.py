"""Small file helpers: atomic writes and JSON lines, so a crash never leaves half a file."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Where tunelab keeps what it can rebuild: built-in models, tokenised text, measurements."""
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab")


def store_cache_entry(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a rebuildable cache entry to a temporary name beside ``path`` (processes may race
    to write the same one), then rename it into place. A full or read-only cache only costs the
    next run the rebuild: the error is swallowed and nothing half-written is left."""
    from safetensors import SafetensorError

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        temporary.replace(path)
    except (OSError, SafetensorError):
        temporary.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(handle, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def give_usual_permissions(path: Path) -> None:
    """safetensors (so transformers and PEFT too) creates its files 0600; give those under ``path``
    the user's umask like every other file tunelab writes."""
    path = Path(path)
    mode = 0o666 & ~_umask()
    for file in [path] if path.is_file() else path.rglob("*"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, mode)


def as_os_error(error: Exception) -> OSError:
    """A failed write as an OSError with its errno: safetensors reports one as text (``... (os error
    28)``), so a full disk reads as a full disk wherever the weights were being written."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"os error (\d+)", str(error))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code) if found else str(error).strip().splitlines()[0])


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def folder_megabytes(folder: Path) -> float:
    """Size on disk of every file under ``folder``, in MiB."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20


def read_json_object(path: Path) -> dict:
    """A JSON object from a file tunelab or a model folder wrote; a damaged one is one clear line."""
    from tunelab.errors import UserError

    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: damaged (not valid JSON)") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: damaged (not a JSON object)")
    return loaded


def read_safetensors(path: Path, where: str = "") -> dict:
    """Every tensor of a safetensors file; a missing or damaged file is one clear line."""
    from safetensors.torch import load_file

    from tunelab.errors import UserError, first_line

    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for damaged or missing files
        raise UserError(f"{where}cannot read {path}: {first_line(error)}") from None
