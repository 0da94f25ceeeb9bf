"""Does `tunelab audit` find flipped labels? 10,000 SST-2 training sentences, 5% of labels flipped
on purpose; how many flipped rows land in the audit's top 10% of suspects (precision, recall).

    .venv/bin/python benchmarks/label_noise_sst2.py        # needs ../shared/data/sst2
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tunelab.builder.runtime import quiet_libraries
from tunelab.config import validate
from tunelab.data.audit import audit
from tunelab.data.label_issues import text_features
from tunelab.data.labels import LabelMap
from tunelab.models import load_model
from tunelab.models.loading import load_tokenizer

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2" / "train.tsv"
ROWS, FLIPPED, SEED = 10_000, 0.05, 0


def main() -> int:
    if not SST2.exists():
        print(f"skipped: {SST2} is not present")
        return 0
    quiet_libraries()
    frame = pd.read_csv(SST2, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(SEED)
    frame = frame.iloc[rng.choice(len(frame), ROWS, replace=False)].reset_index(drop=True)
    flipped = rng.choice(ROWS, int(FLIPPED * ROWS), replace=False)
    frame.loc[flipped, "label"] = frame.loc[flipped, "label"].map({"0": "1", "1": "0"})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.tsv"
        frame.to_csv(path, sep="\t", index=False)
        config = validate(
            {"model": {"source": "minilm"}, "data": {"train": str(path), "text_column": "sentence", "max_length": 64}}
        )
        started = time.perf_counter()
        loaded = load_model(config, LabelMap(("0", "1")))
        report = audit(config, load_tokenizer(config), lambda texts: text_features(loaded, texts, 64), ROWS)
        seconds = time.perf_counter() - started
    found = report["label_errors"]
    suspects = {row - 1 for row in found["top_tenth"]}  # data rows are 1-based
    hits = len(suspects & set(flipped.tolist()))
    result = {
        "rows": ROWS,
        "flipped": len(flipped),
        "top_tenth": len(suspects),
        "flipped_in_top_tenth": hits,
        "recall": hits / len(flipped),
        "precision": hits / len(suspects),
        "probe_accuracy": found["probe_accuracy"],
        "audit_seconds": seconds,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "label_noise_sst2.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
