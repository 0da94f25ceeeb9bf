"""`tunelab export`: a run's model as a standalone folder.

``--format hf`` (the default): a Hugging Face folder; ``--merge`` folds a LoRA or IA3 adapter into
the base weights, so the result loads with plain transformers and no PEFT. ``sentence-transformers``:
a mean- or CLS-pooled run as a full sentence-transformers folder (an adapter merged). ``onnx``:
``model.onnx`` checked against PyTorch with onnxruntime, adapters included as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.builder.runtime import quiet_libraries
from tunelab.errors import UserError
from tunelab.io import folder_megabytes, give_usual_permissions, read_json_object
from tunelab.models import load_saved_model, save_model
from tunelab.models.adapted import merge
from tunelab.models.card import write_model_card
from tunelab.models.loading import LABEL_MAP, portable_name, read_meta
from tunelab.rundir import MODEL, RESULTS


def run_export(run_dir: Path, output: Path, merge_adapter: bool, format: str = "hf") -> dict:
    quiet_libraries()  # no loading or "Writing model shards" bars from transformers
    folder = run_dir / MODEL
    if not folder.is_dir():
        raise UserError(f"export: {run_dir} has no {MODEL}/ folder; is it a finished tunelab run?")
    if output.exists():
        raise UserError(f"export: {output} already exists; choose another --output")
    meta = read_meta(folder)
    if format == "onnx":
        return _export_onnx(folder, output)
    adapted = "base_source" in meta
    if format == "sentence-transformers":
        if "pooling" not in meta:
            raise UserError(
                "export --format sentence-transformers: this run reads transformers' own classification head, "
                "not a pooling of the tokens; --format hf loads with AutoModelForSequenceClassification"
            )
        merge_adapter = True  # the sentence-transformers folder holds the whole model
    if adapted and not merge_adapter:
        raise UserError(
            f"export: {run_dir} holds an adapter only ({meta.get('peft') or 'bottleneck adapter'}); "
            "add --merge to write a full model"
        )
    loaded = load_saved_model(folder)
    model = merge(loaded.model) if adapted else loaded.model
    save_model(loaded, model, output, loaded.labels, meta["task"])
    if (run_dir / RESULTS).exists():
        results = read_json_object(run_dir / RESULTS)
        base = meta.get("base_source") or meta.get("source")  # what the run was tuned from
        write_model_card(output, results, portable_name(base) if meta.get("kind") == "hf" else None)
    kind = f"merged {meta.get('peft', '').lower()} model" if adapted else "full model"
    return {"output": str(output), "size_mb": folder_megabytes(output), "kind": kind}


def _export_onnx(folder: Path, output: Path) -> dict:
    from tunelab.models.onnx_export import export_onnx, write_onnx_card

    loaded = load_saved_model(folder)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        check = export_onnx(loaded, staging)
        shutil.copy2(folder / LABEL_MAP, staging / LABEL_MAP)  # as quantize does
        max_length = loaded.preprocessing.get("max_length") if loaded.tokenizer is not None else None
        write_onnx_card(staging, output, check, loaded.labels, max_length)
        give_usual_permissions(staging)
        staging.rename(output)
    except OSError as error:
        raise UserError(f"export: cannot write {output}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": str(output), "size_mb": folder_megabytes(output), "kind": "onnx"} | check
