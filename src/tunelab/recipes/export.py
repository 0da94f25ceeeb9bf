"""`tunelab export`: a run's model as a standalone folder; ``--merge`` folds a LoRA or IA3
adapter into the base weights, so the result loads with plain transformers and no PEFT."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import UserError
from tunelab.io import folder_megabytes, read_json_object
from tunelab.models import load_saved_model, save_model
from tunelab.models.adapted import merge
from tunelab.models.card import write_model_card
from tunelab.models.loading import portable_name, read_meta
from tunelab.rundir import MODEL, RESULTS


def run_export(run_dir: Path, output: Path, merge_adapter: bool) -> dict:
    folder = run_dir / MODEL
    if not folder.is_dir():
        raise UserError(f"export: {run_dir} has no {MODEL}/ folder; is it a finished tunelab run?")
    if output.exists():
        raise UserError(f"export: {output} already exists; choose another --output")
    meta = read_meta(folder)
    adapted = "base_source" in meta
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
