"""`tunelab quantize`: a finished run's model in int8, written as a run directory of its own
(eval and predict load it), with the float and int8 models measured side by side.

The int8 weights are saved with safetensors; the model's architecture is rebuilt from the float
run it came from (recorded as ``float_source``, as an adapter records its base model).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from rich.console import Console
from safetensors.torch import save_file
from torch.utils.data import Subset

from tunelab.builder.runtime import quiet_libraries
from tunelab.compress.measure import SCORED, measured, weights_mb
from tunelab.compress.qstate import to_tensors
from tunelab.compress.quantize import quantized
from tunelab.config import dump_config
from tunelab.engine.data_loading import eval_loader
from tunelab.evaluate import model_inputs
from tunelab.io import folder_megabytes, give_usual_permissions, read_json_object, write_atomic, write_json
from tunelab.models.loading import LABEL_MAP, TUNELAB_META
from tunelab.recipes.evaluate import load_run, run_datasets
from tunelab.rundir import CONFIG, MODEL, RESULTS
from tunelab.tasks import get_task

QUANTIZED_WEIGHTS = "quantized.safetensors"


def run_quantize(run_dir: Path, method: str, output: Path, calibration_rows: int, console: Console, show: bool) -> dict:
    """The int8 copy of ``run_dir``'s model, measured, written into ``output`` (a claimed run directory)."""
    quiet_libraries()
    config, loaded = load_run(run_dir)
    data = run_datasets(config, loaded)
    collate = get_task(config).collate(loaded, config)
    float_model = loaded.model.eval().cpu()
    rows = range(min(calibration_rows, len(data["train"])))
    calibration = [model_inputs(batch) for batch in eval_loader(Subset(data["train"], rows), 32, collate)]
    example = {key: value[:1] for key, value in calibration[0].items()}
    status = console.status(f"quantizing ({method}) and measuring ...") if show else contextlib.nullcontext()
    with status:
        int8 = quantized(float_model, method, example, calibration)
        splits = {name: data[name] for name in SCORED if name in data}
        # Scored in the batches `tunelab eval` uses: dynamic int8 scales each batch's activations
        # by that batch's range, so the batching moves the last digit.
        size = config.train.eval_batch_size
        report = {name: measured(model, data, collate, get_task(config).scorer(loaded.labels), size)
                  for name, model in (("float", float_model), ("int8", int8))}  # fmt: skip
    return _write(run_dir, output, config, int8, method, example, report, splits, loaded, calibration_rows)


def _write(run_dir, output, config, int8, method, example, report, splits, loaded, calibration_rows):
    source = Path(run_dir) / MODEL
    write_atomic(output / CONFIG, dump_config(config))
    folder = output / MODEL
    folder.mkdir()
    save_file(to_tensors(int8.state_dict()), str(folder / QUANTIZED_WEIGHTS))
    shape = {key: list(value.shape) for key, value in example.items()}
    meta = read_json_object(source / TUNELAB_META) | {
        "quantization": {"method": method, "backend": "x86", "example": shape},
        "float_source": str(source.resolve()),
    }
    write_json(folder / TUNELAB_META, meta)
    if (source / LABEL_MAP).exists():
        shutil.copy2(source / LABEL_MAP, folder / LABEL_MAP)
    report["float"]["size_mb"] = weights_mb(source)
    report["int8"]["size_mb"] = weights_mb(folder)
    compression = {"method": method, "source_run": str(run_dir), "metric": config.train.metric} | report
    compression["calibration_rows"] = calibration_rows if method == "static" else 0
    results = {
        "task": config.task,
        "compression": compression,
        "final": {split: report["int8"][split] for split in splits},
        "labels": list(loaded.labels.names),
        "saved_model_mb": folder_megabytes(folder),
    }
    write_json(output / RESULTS, results)
    give_usual_permissions(output)
    return results
