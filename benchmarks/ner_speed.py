"""Token-classification training speed: tunelab against Hugging Face Trainer (with
``DataCollatorForTokenClassification``) and a plain PyTorch loop, on MiniLM, the same CoNLL-2003
sentences and settings, each in a fresh process; entity F1 on the whole dev set, scored the same
way (``tunelab.evaluate.entities``) for all three.

    .venv/bin/python benchmarks/ner_speed.py                 # make bench; about 15 minutes on two cores
    .venv/bin/python benchmarks/ner_speed.py --rows 500

Scenarios:

- ``identical``: batch 16, AdamW at 1e-4, linear schedule with 10% warm-up, one epoch, max_length
  192, no length grouping anywhere: the frameworks' own overhead.
- ``defaults``: each as a user gets it, one epoch: tunelab with examples/conll2003-minilm.yaml's
  batch and rate (16, 1e-4) and its default length grouping, against Trainer's defaults (batch
  8, lr 5e-5, no grouping).

Needs ../shared/data/conll2003 (skips with a message without it). Writes
``benchmarks/results/ner_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONLL = Path(os.environ.get("TUNELAB_BENCH_CONLL") or ROOT.parent / "shared" / "data" / "conll2003")
OUT = ROOT / "benchmarks" / "results" / "ner_speed.json"
SEED = 0
MAX_LENGTH = 192
RUNS = {
    "identical": {"tunelab": {"batch": 16, "lr": 1e-4, "grouped": False}, "trainer": {"batch": 16, "lr": 1e-4},
                  "plain": {"batch": 16, "lr": 1e-4}},
    "defaults": {"tunelab": {"batch": 16, "lr": 1e-4, "grouped": True}, "trainer": {"batch": 8, "lr": 5e-5}},
}  # fmt: skip


def sentences(rows: int, folder: Path) -> dict:
    """A seeded draw of ``rows`` training sentences written as CoNLL, and the dev file."""
    from tunelab.data.conll import read_conll

    words, tags, _ = read_conll(CONLL / "train.txt", "bench")
    chosen = sorted(random.Random(SEED).sample(range(len(words)), rows))
    text = "".join("".join(f"{w} {t}\n" for w, t in zip(words[i], tags[i], strict=True)) + "\n" for i in chosen)
    (folder / "train.txt").write_text(text, encoding="utf-8")
    return {"train": str(folder / "train.txt"), "dev": str(CONLL / "dev.txt")}


def split(path: str):
    from tunelab.config import validate
    from tunelab.tasks import get_task

    config = validate({"task": "token-classification", "data": {"train": path}})
    return get_task(config).read_split(path, "train", config)


def hf_parts(paths: dict):
    """MiniLM with a token head, its tokenizer, and train/dev aligned as tunelab aligns them."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from tunelab.data.tokens import TagMap, aligned
    from tunelab.models.loading import _minilm_folder

    train, dev = split(paths["train"]), split(paths["dev"])
    tags = TagMap.from_tags(train.labels)
    folder = _minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(SEED)
    model = AutoModelForTokenClassification.from_pretrained(folder, num_labels=len(tags))
    datasets = {}
    for name, part in (("train", train), ("dev", dev)):
        dataset, _ = aligned(tokenizer, part.inputs, tags.encode(part.labels, name), MAX_LENGTH, len(tags))
        for row in range(len(dataset)):  # plain labels: later sub-tokens ignored, as tunelab's loss does
            dataset.labels[row] = [label if label < len(tags) else -100 for label in dataset.labels[row]]
        datasets[name] = dataset
    return model, tokenizer, tags, datasets


def dev_f1(model, tokenizer, tags, dataset) -> float:
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForTokenClassification

    from tunelab.tasks import get_task

    loader = DataLoader(dataset, batch_size=128, collate_fn=DataCollatorForTokenClassification(tokenizer))
    task, scores = get_task("token-classification"), []
    model.eval()
    with torch.inference_mode():
        logits, labels = zip(*[(model(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"])
                               for b in loader], strict=True)  # fmt: skip
    from tunelab.evaluate import IGNORED, padded_cat

    scores = task.scores(padded_cat(list(logits), 0.0), padded_cat(list(labels), IGNORED), tags)
    return scores["f1"]


def run_tunelab(paths: dict, settings: dict, folder: Path) -> dict:
    from tunelab.builder import run_training
    from tunelab.config import validate
    from tunelab.rundir import RESULTS, prepare_run_dir

    config = validate({
        "task": "token-classification", "seed": SEED, "model": {"source": "minilm"},
        "data": {"train": paths["train"], "validation": paths["dev"], "max_length": MAX_LENGTH, "cache": False},
        "optim": {"lr": settings["lr"], "weight_decay": 0.01}, "schedule": {"name": "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 1, "batch_size": settings["batch"], "eval_batch_size": 128, "group_by_length":
                  settings["grouped"], "eval_every": 10**6, "load_best_at_end": False, "checkpoint_every": None},
        "evaluate": {"max_train_examples": 1, "base": False}, "forgetting": {"drift": False},
    })  # fmt: skip
    run_dir = folder / "tunelab-run"
    run_training(config, prepare_run_dir(run_dir, False), progress=False)
    results = json.loads((run_dir / RESULTS).read_text())
    return {"train_seconds": results["train_seconds"], "dev_f1": results["final"]["validation"]["f1"]}


def run_trainer(paths: dict, settings: dict, folder: Path) -> dict:
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    model, tokenizer, tags, datasets = hf_parts(paths)
    arguments = TrainingArguments(
        output_dir=str(folder / "trainer"), per_device_train_batch_size=settings["batch"],
        learning_rate=settings["lr"], num_train_epochs=1, seed=SEED, report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, **({"weight_decay": 0.01, "warmup_steps": 0.1}
                                                if settings["batch"] == 16 else {}),
    )  # fmt: skip
    trainer = Trainer(model=model, args=arguments, train_dataset=datasets["train"],
                      data_collator=DataCollatorForTokenClassification(tokenizer))  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "dev_f1": dev_f1(model, tokenizer, tags, datasets["dev"])}


def run_plain(paths: dict, settings: dict, folder: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForTokenClassification, get_linear_schedule_with_warmup

    model, tokenizer, tags, datasets = hf_parts(paths)
    loader = DataLoader(datasets["train"], batch_size=settings["batch"], shuffle=True,
                        collate_fn=DataCollatorForTokenClassification(tokenizer),
                        generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * len(loader)), len(loader))
    model.train()
    started = time.perf_counter()
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "dev_f1": dev_f1(model, tokenizer, tags, datasets["dev"])}


def one(scenario: str, tool: str, rows: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        paths = sentences(rows, Path(folder))
        found = {"tunelab": run_tunelab, "trainer": run_trainer, "plain": run_plain}[tool](
            paths, RUNS[scenario][tool], Path(folder)
        )
    return found | {"sentences_per_second": rows / found["train_seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--one", nargs=2, metavar=("SCENARIO", "TOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.rows)))
        return 0
    if not CONLL.exists():
        print(f"skipped: {CONLL} is absent")
        return 0
    import torch

    results = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "rows": args.rows, "scenarios": {}}  # fmt: skip
    for scenario, tools in RUNS.items():
        for tool in tools:
            command = [sys.executable, __file__, "--rows", str(args.rows), "--one", scenario, tool]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
            if done.returncode:
                print(done.stderr[-3000:])
                return 1
            found = json.loads(done.stdout.strip().splitlines()[-1])
            results["scenarios"].setdefault(scenario, {})[tool] = found
            speed, seconds, f1 = found["sentences_per_second"], found["train_seconds"], found["dev_f1"]
            print(f"{scenario:10} {tool:8} {speed:6.1f} sentences/s  train {seconds:6.1f} s  dev entity F1 {f1:.4f}")
        speeds = {tool: found["sentences_per_second"] for tool, found in results["scenarios"][scenario].items()}
        print(f"{scenario:10} tunelab / Trainer: {speeds['tunelab'] / speeds['trainer']:.2f}x")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
