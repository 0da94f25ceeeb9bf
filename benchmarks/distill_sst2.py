"""Distillation measured on this machine: MiniLM fine-tuned on the SST-2 example (6 layers, the
teacher), a 3-layer student cut from it and distilled, and the same student trained on the labels
alone, each scored on the SST-2 dev set and timed on the CPU.

    .venv/bin/python benchmarks/distill_sst2.py        # needs ../shared/data/sst2; ~6 minutes

Writes benchmarks/results/distill_sst2.json. Run it on a quiet machine.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from tunelab.builder import run_training
from tunelab.config import load_config
from tunelab.recipes.distill import STUDENT_INIT, run_distill, side_by_side
from tunelab.rundir import prepare_run_dir

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
EXAMPLE = ROOT / "examples" / "sst2-minilm.yaml"


def main() -> int:
    console = Console()
    if not SST2.exists():
        console.print(f"skipped: {SST2} is not present")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        teacher, student = Path(folder) / "teacher", Path(folder) / "student"
        run_training(load_config(EXAMPLE), prepare_run_dir(teacher, False), progress=False)
        distilled = run_distill(teacher, "layers:3", [], student, False, console, False)
        alone_config = load_config(EXAMPLE, [f"model.source={student / STUDENT_INIT}"])
        alone = run_training(alone_config, prepare_run_dir(Path(folder) / "alone", False), progress=False)
        found = side_by_side(teacher, student) | {
            "student_without_teacher": {
                "validation": alone["final"]["validation"],
                "train_seconds": alone["train_seconds"],
            },
            "student_train_seconds": distilled["train_seconds"],
            "machine": platform.machine(),
            "python": sys.version.split()[0],
        }
    teacher_accuracy = found["teacher"]["validation"]["accuracy"]
    for name, accuracy in (
        ("teacher (6 layers)", teacher_accuracy),
        ("student, distilled (3 layers)", found["student"]["validation"]["accuracy"]),
        ("student, labels only (3 layers)", found["student_without_teacher"]["validation"]["accuracy"]),
    ):
        console.print(f"{name}: dev accuracy {accuracy:.4f} ({accuracy / teacher_accuracy:.1%} of the teacher)")
    speed = found["teacher"]["batch_32_ms"] / found["student"]["batch_32_ms"]
    console.print(f"student {speed:.2f}x faster at batch 32 ({found['student']['threads']} threads)")
    out = ROOT / "benchmarks" / "results" / "distill_sst2.json"
    out.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
