"""`tunelab distill`: a smaller student trained from a finished run (the teacher), as a normal run
directory, then measured beside the teacher (size, parameters, latency, accuracy)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.builder import run_training
from tunelab.builder.runtime import quiet_libraries
from tunelab.compress.distill import every_kth_layer
from tunelab.compress.measure import measured, weights_mb
from tunelab.config import load_config
from tunelab.errors import UserError
from tunelab.io import write_json
from tunelab.models.saving import save_model
from tunelab.recipes.evaluate import load_run, run_datasets
from tunelab.rundir import CONFIG, MODEL, RESULTS, existing_run
from tunelab.tasks import get_task

STUDENT_INIT = "student-init"


def run_distill(
    teacher_dir: Path, student: str, overrides: list[str], output: Path, console: Console, show: bool
) -> dict:
    """Train the student into ``output`` (a claimed run directory) and measure it beside the teacher."""
    quiet_libraries()  # the student's first save would show transformers' "Writing model shards" bar
    teacher_dir = existing_run(teacher_dir)
    raw = load_config(teacher_dir / CONFIG, []).model_dump(mode="json", exclude={"output_dir"})
    raw["distill"] = {"teacher": str(teacher_dir.resolve())}
    raw["model"]["source"] = _student_source(teacher_dir, student, output)
    config = load_config(None, overrides, base=raw)
    results = run_training(config, output, console, progress=show)
    results["distillation"] = side_by_side(teacher_dir, output) | {"student_spec": student}
    write_json(output / RESULTS, results)
    return results


def _student_source(teacher_dir: Path, student: str, output: Path) -> str:
    """``layers:N``: the teacher cut to N evenly spaced blocks, saved in the run; else a model source."""
    if not student.startswith("layers:"):
        return student
    try:
        layers = int(student.removeprefix("layers:"))
    except ValueError:
        raise UserError(f"--student {student}: write layers:N with a whole number N, or a model source") from None
    config, loaded = load_run(teacher_dir)
    model, kept = every_kth_layer(loaded.model, layers)
    folder = save_model(loaded, model, output / STUDENT_INIT, loaded.labels, config.task)
    write_json(folder / "kept_layers.json", {"teacher_blocks_kept": kept})
    return str(folder.resolve())


def side_by_side(teacher_dir: Path, student_dir: Path) -> dict:
    """Teacher and student measured alike on the CPU."""
    found = {"method": "distill"}
    for name, run_dir in (("teacher", teacher_dir), ("student", student_dir)):
        run_config, loaded = load_run(run_dir)
        data = run_datasets(run_config, loaded)
        task = get_task(run_config)
        collate = task.collate(loaded, run_config)
        size = run_config.train.eval_batch_size
        found[name] = measured(loaded.model.eval().cpu(), data, collate, task.scorer(loaded.labels), size)
        found[name]["size_mb"] = weights_mb(run_dir / MODEL)
        found["metric"] = run_config.train.metric
    return found
