"""Post-training int8 quantization measured end to end on this machine:

- MiniLM fine-tuned on the SST-2 example (examples/sst2-minilm.yaml), quantized dynamically;
- the digits CNN (examples/digits-forgetting.yaml without its retain set), quantized statically,
  and the same run trained quantization-aware (train.quantization_aware).

    .venv/bin/python benchmarks/quantize.py        # SST-2 part needs ../shared/data/sst2

Writes benchmarks/results/quantize.json. Run it on a quiet machine: latencies are medians of
repeated runs, but two jobs on two cores still slow each other.
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
from tunelab.recipes.quantize import run_quantize
from tunelab.report.terminal import compression_table
from tunelab.rundir import prepare_run_dir

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
CASES = {
    "minilm-sst2-dynamic": (ROOT / "examples" / "sst2-minilm.yaml", [], "dynamic"),
    "digits-cnn-static": (ROOT / "examples" / "digits-forgetting.yaml", ["retain=[]"], "static"),
}


def main() -> int:
    console = Console()
    found = {"machine": platform.machine(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as folder:
        for name, (config_file, overrides, method) in CASES.items():
            if "sst2" in name and not SST2.exists():
                console.print(f"{name}: skipped, {SST2} is not present")
                continue
            config = load_config(config_file, overrides)
            run_dir = prepare_run_dir(Path(folder) / name, overwrite=False)
            run_training(config, run_dir, progress=False)
            results = run_quantize(run_dir, method, Path(folder) / f"{name}-int8", False, 256, console, False)
            console.print(compression_table(results["compression"], "float", "int8"))
            found[name] = results["compression"]
        qat_overrides = ["retain=[]", "train.quantization_aware=true", "train.load_best_at_end=false"]
        config = load_config(ROOT / "examples" / "digits-forgetting.yaml", qat_overrides)
        qat = run_training(config, prepare_run_dir(Path(folder) / "qat", overwrite=False), progress=False)
        found["digits-cnn-qat"] = qat["quantization_aware"] | {"saved_model_mb": qat["saved_model_mb"]}
        float_test = found["digits-cnn-static"]["float"]["test"]["accuracy"]
        console.print(
            f"digits CNN test accuracy: float {float_test:.4f}, quantization-aware int8 "
            f"{qat['quantization_aware']['int8']['test']['accuracy']:.4f}"
        )
    out = ROOT / "benchmarks" / "results" / "quantize.json"
    out.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
