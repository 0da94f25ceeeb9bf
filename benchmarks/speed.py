"""Training speed side by side: tunelab, a plain PyTorch loop, Hugging Face Trainer and PyTorch
Lightning on the same model, rows and hyperparameters.

    .venv/bin/python benchmarks/speed.py                 # make bench; about 70 minutes on two cores
    .venv/bin/python benchmarks/speed.py --repeats 1 --scenarios identical-full

Every run is a fresh process (so its peak RSS is its own), runs alternate between the frameworks,
and the median of ``--repeats`` is reported. Scenarios:

- ``identical-full`` / ``identical-lora``: MiniLM (its transformers head) full fine-tuning and LoRA
  (r 8 on query and value) on 2,000 SST-2 sentences, one epoch, batch 16, AdamW (fused) at one
  rate, linear schedule, and the same shuffled order of rows for tunelab, the plain loop and
  Lightning (Trainer draws its own order; its batches have the same size). tunelab runs with
  length grouping off here, so every framework pads the same batches.
- ``defaults``: each tool as a user gets it (three epochs, both tools' default; "s per epoch"
  is the mean): tunelab's defaults against Trainer's defaults and Trainer with
  ``train_sampling_strategy="group_by_length"``; repeat k runs every tool with seed k (its head,
  dropout and order of rows), since accuracy is compared here too.
- ``startup`` / ``startup-full``: seconds from process start to the first training step of
  tunelab's default text run, with an empty cache and then again with the cache it left, on the
  2,000 sentences and on the whole SST-2 training set.
- ``digits-cnn``: the built-in CNN on scikit-learn's digits (no download), all four, for
  ``DIGITS_EPOCHS`` epochs (its "s per epoch" is the mean).
- ``paired-full`` / ``paired-lora`` / ``paired-cnn``: tunelab's overhead over the plain loop,
  measured where this machine's drift cannot hide it. Separate processes moved 15-45% from run
  to run here, far more than a loop adds; so in one process, on one model, optimizer and
  batches, short blocks of tunelab's ``fit`` and of the plain loop alternate (``PAIRS`` pairs),
  and the ratio is the median of the pairs' ratios.

The start-up scenarios run ``tunelab train`` as a user does (``tunelab.cli.main``), and also
time a process that only imports what any text run needs (torch, transformers' BERT, Accelerate,
pandas), with the cyclic garbage collector paused as a tunelab command's set-up has it: the
floor a cached start cannot go below. tunelab's own
modules are compiled to bytecode first, as pip compiles any installed package (an editable
install is not, and where ``PYTHONDONTWRITEBYTECODE`` is set, as on this machine, they would be
compiled again in every process).

Without ``../shared/data/sst2`` the text scenarios use a tiny random BERT on generated sentences.
Writes ``benchmarks/results/speed.json`` with the machine and thread count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("TUNELAB_BENCH_SST2") or ROOT.parent / "shared" / "data" / "sst2")
OUT = ROOT / "benchmarks" / "results" / "speed.json"
SEED = 0
LR = 5e-5
LORA_LR = 5e-4
BATCH = 16
# One epoch of the digits CNN takes a tenth of a second; ten epochs (one second) still moved by
# 10% from run to run on this machine, so fifty.
DIGITS_EPOCHS = 50
# tunelab's train.epochs and Trainer's num_train_epochs both default to three.
DEFAULT_EPOCHS = 3
SCENARIOS = {
    "identical-full": ("tunelab", "plain", "trainer", "lightning"),
    "identical-lora": ("tunelab", "plain", "trainer", "lightning"),
    "defaults": ("tunelab", "trainer", "trainer-grouped"),
    "digits-cnn": ("tunelab", "plain", "trainer", "lightning"),
    # tunelab's start-up, first run against the cached second, each repeat with an empty cache:
    # on the 2,000 sentences, and on all of SST-2's training set (67,349).
    "startup": ("first", "second", "imports"),
    "startup-full": ("first", "second", "imports"),
    "paired-full": ("tunelab-vs-plain",),
    "paired-lora": ("tunelab-vs-plain",),
    "paired-cnn": ("tunelab-vs-plain",),
}
# A paired scenario: the scenario whose settings it uses, and the steps in each block (a few
# seconds of training: short enough that drift is shared, long enough to time).
PAIRED = {"paired-full": ("identical-full", 8), "paired-lora": ("identical-lora", 8), "paired-cnn": ("digits-cnn", 100)}
PAIRS = 30


# --- data and model, the same for every framework --------------------------------------------


def write_rows(folder: Path, rows: int) -> dict:
    """2,000 SST-2 training sentences (a seeded draw) and the dev set as CSV files, or generated
    sentences when SST-2 is absent; returns where they are and which model to use."""
    import pandas as pd

    if SST2.exists():
        train = pd.read_csv(SST2 / "train.tsv", sep="\t").sample(n=rows, random_state=SEED)
        dev = pd.read_csv(SST2 / "dev.tsv", sep="\t")
        model = "minilm"
    else:
        rng = random.Random(SEED)
        good, bad = ["good", "great", "fine", "superb"], ["bad", "awful", "dull", "poor"]
        filler = ["the", "film", "was", "a", "story"]

        def sentences(count: int) -> pd.DataFrame:
            labels = [rng.randrange(2) for _ in range(count)]
            words = [
                " ".join(rng.choice(filler + (good if label else bad)) for _ in range(rng.randrange(3, 30)))
                for label in labels
            ]
            return pd.DataFrame({"sentence": words, "label": labels})

        train, dev = sentences(rows), sentences(400)
        model = str(tiny_bert(folder / "tiny-bert"))
    train.to_csv(folder / "train.csv", index=False)
    dev.to_csv(folder / "dev.csv", index=False)
    full = str(SST2 / "train.tsv") if SST2.exists() else str(folder / "train.csv")
    return {"train": str(folder / "train.csv"), "dev": str(folder / "dev.csv"), "full_train": full, "model": model}


def tiny_bert(folder: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tunelab.models.loading import _minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(_minilm_folder())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_labels=2,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def model_folder(source: str) -> str:
    from tunelab.models.loading import _minilm_folder

    return str(_minilm_folder()) if source == "minilm" else source


def text_model(source: str, lora: bool):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEED)
    folder = model_folder(source)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS"),
        )
    return model, AutoTokenizer.from_pretrained(folder)


def text_datasets(paths: dict, tokenizer):
    import pandas as pd

    from tunelab.data.text import tokenize

    found = {}
    for split in ("train", "dev"):
        table = pd.read_csv(paths[split])
        found[split], _ = tokenize(tokenizer, table["sentence"].astype(str).tolist(), table["label"].tolist(), 64)
    return found


def digits_data():
    from tunelab.data import digits

    parts = digits.digits_splits([5, 6, 7, 8, 9], None, 20, SEED)
    names = sorted(set(parts["train"][1]))
    as_ids = {split: [names.index(label) for label in labels] for split, (_, labels) in parts.items()}
    return {split: digits.as_dataset(parts[split][0], as_ids[split]) for split in ("train", "test")}


def digits_model():
    import torch

    from tunelab.config import validate
    from tunelab.data.labels import LabelMap
    from tunelab.models import load_model

    torch.manual_seed(SEED)
    config = validate({"task": "image-classification", "model": {"source": "digits-cnn"}, "data": {"train": "digits"}})
    return load_model(config, LabelMap.from_labels(["5", "6", "7", "8", "9"]), 1).model


# --- one run per process ----------------------------------------------------------------------


def ordered_loader(dataset, collate):
    """The rows in tunelab's own shuffled order (seed, epoch 0), batched alike."""
    from torch.utils.data import DataLoader

    from tunelab.engine.data_loading import EpochShuffleSampler

    return DataLoader(dataset, batch_size=BATCH, sampler=EpochShuffleSampler(len(dataset), SEED), collate_fn=collate)


def accuracy(model, dataset, collate) -> float:
    import torch
    from torch.utils.data import DataLoader

    from tunelab.evaluate import model_inputs, output_logits

    model.eval()
    right = total = 0
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=128, collate_fn=collate):
            predicted = output_logits(model(**model_inputs(batch))).argmax(-1)
            right += int((predicted == batch["labels"]).sum())
            total += len(predicted)
    return right / total


def adamw(model, lr: float):
    """Decay on weights, none on biases and normalisation layers, as Trainer and tunelab do."""
    import torch

    from tunelab.engine.optim import decay_groups

    return torch.optim.AdamW(decay_groups(model, lr, weight_decay=0.01), lr=lr, fused=True)


def worker(framework: str, scenario: str, paths: dict) -> dict:
    if framework == "imports":  # start-up is timed from the process start: nothing imported before
        return run_imports()
    if scenario.startswith("startup"):
        return run_startup(scenario, paths)
    import torch

    if scenario in PAIRED:
        return run_paired(scenario, paths)
    if framework == "tunelab":
        return run_tunelab(scenario, paths)
    if scenario == "digits-cnn":
        datasets, model, lr, collate = digits_data(), digits_model(), 3e-3, torch.utils.data.default_collate
        evaluation = datasets["test"]
    else:
        from transformers import DataCollatorWithPadding

        lora = scenario == "identical-lora"
        model, tokenizer = text_model(paths["model"], lora)
        datasets, lr = text_datasets(paths, tokenizer), LORA_LR if lora else LR
        collate, evaluation = DataCollatorWithPadding(tokenizer), datasets["dev"]
    epochs = {"digits-cnn": DIGITS_EPOCHS, "defaults": DEFAULT_EPOCHS}.get(scenario, 1)
    rows = len(datasets["train"]) * epochs
    # Every import before the clock starts (transformers loads its parts lazily, on first use).
    import lightning  # noqa: F401
    from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup  # noqa: F401

    warm_up(model, datasets["train"], collate)
    started = time.perf_counter()
    if framework == "plain":
        plain_loop(model, ordered_loader(datasets["train"], collate), lr, epochs)
    elif framework == "lightning":
        lightning_fit(model, ordered_loader(datasets["train"], collate), lr, epochs)
    else:
        trainer_fit(model, datasets["train"], collate, lr, scenario, framework, epochs)
    seconds = time.perf_counter() - started
    score = accuracy(model, evaluation, collate)
    return {"epoch_seconds": seconds / epochs, "samples_per_second": rows / seconds, "accuracy": score}


def warm_up(model, dataset, collate) -> None:
    """One forward pass before the clock starts, as tunelab's run makes one (its feature-drift
    probe) before its own: the first call of a kernel sets it up."""
    import torch

    from tunelab.evaluate import model_inputs

    model.eval()  # get_peft_model hands back a model in training mode, whose dropout would draw
    with torch.inference_mode():
        model(**model_inputs(collate([dataset[i] for i in range(BATCH)])))


def plain_loop(model, loader, lr: float, epochs: int) -> None:
    """What a user writes by hand: the floor any framework adds overhead to."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = adamw(model, lr)
    steps = len(loader) * epochs
    schedule = get_linear_schedule_with_warmup(optimizer, 0, steps)
    plain_steps(model, loader, list(model.parameters()), optimizer, schedule, steps)


def plain_steps(model, loader, clipped: list, optimizer, schedule, steps: int) -> None:
    """The plain loop's ``steps`` steps, epoch after epoch of ``loader``, clipping ``clipped``."""
    import torch

    from tunelab.evaluate import model_inputs, output_logits

    done = 0
    model.train()
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            logits = output_logits(model(**model_inputs(batch)))
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
            torch.nn.utils.clip_grad_norm_(clipped, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                return


def lightning_fit(model, loader, lr: float, epochs: int) -> None:
    """Lightning sets the sampler's epoch itself at each epoch start."""
    import lightning
    import torch
    from transformers import get_linear_schedule_with_warmup

    from tunelab.evaluate import model_inputs, output_logits

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, index):
            logits = output_logits(self.model(**model_inputs(batch)))
            return torch.nn.functional.cross_entropy(logits, batch["labels"])

        def configure_optimizers(self):
            optimizer = adamw(self.model, lr)
            schedule = get_linear_schedule_with_warmup(optimizer, 0, len(loader) * epochs)
            return [optimizer], [{"scheduler": schedule, "interval": "step"}]

    # Lightning 2.2+ leaves the module in the mode it was handed (from_pretrained gives eval mode,
    # which would train without dropout): a Lightning user sets train mode first, as its warning asks.
    model.train()
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Module(), loader)


def trainer_fit(model, dataset, collate, lr: float, scenario: str, framework: str, epochs: int) -> None:
    import torch
    from transformers import Trainer, TrainingArguments

    from tunelab.evaluate import model_inputs, output_logits

    class Loss(Trainer):  # one loss for every model (the CNN returns bare logits)
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            outputs = model(**model_inputs(inputs))
            loss = torch.nn.functional.cross_entropy(output_logits(outputs), inputs["labels"])
            return (loss, outputs) if return_outputs else loss

    folder = tempfile.mkdtemp(prefix="trainer-")
    # The CNN's forward names no labels, so Trainer would drop them as unused.
    keep = {"remove_unused_columns": False} if scenario == "digits-cnn" else {}
    if scenario == "defaults":  # as a user gets it, with no hub reporting
        extra = {"train_sampling_strategy": "group_by_length"} if framework == "trainer-grouped" else {}
        arguments = TrainingArguments(folder, report_to="none", seed=SEED, **extra, **keep)
        assert arguments.num_train_epochs == epochs
    else:
        arguments = TrainingArguments(
            folder, num_train_epochs=epochs, per_device_train_batch_size=BATCH, learning_rate=lr, weight_decay=0.01,
            report_to="none", save_strategy="no", logging_steps=10, use_cpu=True, seed=SEED, **keep,
        )  # fmt: skip
    Loss(model=model, args=arguments, train_dataset=dataset, data_collator=collate).train()


def tunelab_config(scenario: str, paths: dict) -> dict:
    from tunelab.config import validate

    if scenario == "digits-cnn":
        config = {
            "task": "image-classification", "seed": SEED, "model": {"source": "digits-cnn"},
            "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_validation_per_class": 20},
            "optim": {"lr": 3e-3},
        }  # fmt: skip
    else:
        config = {
            "task": "text-classification", "seed": SEED, "model": {"source": paths["model"]},
            "data": {"train": paths["train"], "validation": paths["dev"], "text_column": "sentence",
                     "label_column": "label", "max_length": 64},
        }  # fmt: skip
    if scenario == "defaults":
        assert validate(config).train.epochs == DEFAULT_EPOCHS  # everything as tunelab gives it
    else:
        if scenario != "digits-cnn":
            config["model"]["pooling"] = "head"  # the same transformers head the others train
            config["optim"] = {"lr": LORA_LR if scenario == "identical-lora" else LR}
        if scenario == "identical-lora":
            config["strategy"] = {"name": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}}
        config["train"] = {
            "epochs": DIGITS_EPOCHS if scenario == "digits-cnn" else 1, "batch_size": BATCH, "group_by_length": False,
            "checkpoint_every": None,
            "eval_every": 10**6, "load_best_at_end": False,
        }  # fmt: skip
        config["evaluate"] = {"base": False, "max_train_examples": 1}
    return config


def run_tunelab(scenario: str, paths: dict) -> dict:
    from tunelab.builder import run_training
    from tunelab.config import validate

    run_dir = Path(tempfile.mkdtemp(prefix="tunelab-")) / "run"
    run_dir.mkdir()
    results = run_training(validate(tunelab_config(scenario, paths)), run_dir, progress=False)
    rows = results["examples"]["train"] * results["epochs_completed"]
    split = "test" if scenario == "digits-cnn" else "validation"
    return {
        "epoch_seconds": results["train_seconds"] / results["epochs_completed"],
        "samples_per_second": rows / results["train_seconds"],
        "accuracy": results["final"][split]["accuracy"],
        "startup_seconds": results["startup_seconds"],
    }


def run_startup(scenario: str, paths: dict) -> dict:
    """One step of tunelab's default text run, as ``tunelab train`` runs it: what matters here is
    how long it took to start."""
    import yaml

    from tunelab.cli import main

    train = paths["full_train"] if scenario == "startup-full" else paths["train"]
    config = {
        "task": "text-classification", "seed": SEED, "model": {"source": paths["model"]},
        "data": {"train": train, "validation": paths["dev"], "text_column": "sentence", "label_column": "label",
                 "max_length": 64},
        "train": {"max_steps": 1, "checkpoint_every": None},
    }  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="tunelab-"))
    (folder / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if main(["train", str(folder / "run.yaml"), "--output", str(folder / "run"), "--quiet"]) != 0:
        raise SystemExit("tunelab train failed")
    results = json.loads((folder / "run" / "results.json").read_text(encoding="utf-8"))
    cached = all(results["tokens_from_cache"].values()) and all(results["measured_from_cache"].values())
    return {"startup_seconds": results["startup_seconds"], "rows": results["examples"]["train"], "cached": cached}


def run_imports() -> dict:
    """Only the imports any text run needs before training: the floor of a cached start. Made as
    a tunelab command makes its set-up, without the cyclic garbage collector."""
    from tunelab.collector import set_up_uncollected

    with set_up_uncollected():
        import accelerate  # noqa: F401
        import pandas  # noqa: F401
        import torch  # noqa: F401
        import transformers.modeling_utils  # noqa: F401
        import transformers.models.bert.modeling_bert  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401

    finished = time.time()  # before importing the clock the tunelab runs are timed by (it imports the config)
    from tunelab.builder.runtime import process_started_at

    return {"startup_seconds": finished - process_started_at(), "rows": 0, "cached": True}


def run_paired(scenario: str, paths: dict) -> dict:
    """Blocks of tunelab's ``fit`` and of the plain loop, alternating on one model, optimizer and
    loader order (each block trains the first batches of epoch 0); the model trains on throughout,
    which changes no block's work. tunelab's blocks also pay for one batch that Accelerate's loader
    reads ahead and the block never trains (a run pays it once, not once every few steps): for
    MiniLM's 8-step blocks a padding call in 8 steps of 0.3 s, so the ratio errs against tunelab."""
    import torch
    from torch.utils.data import DataLoader

    from tunelab.builder import prepare_run
    from tunelab.builder.runtime import make_accelerator, quiet_libraries
    from tunelab.config import validate
    from tunelab.engine.callbacks import Callback, TrainState
    from tunelab.engine.data_loading import EpochShuffleSampler
    from tunelab.engine.lean import stepped_optimizer
    from tunelab.engine.loop import Trainee, fit
    from tunelab.engine.schedules import build_scheduler
    from tunelab.models.builtin import build_cached

    like, steps = PAIRED[scenario]
    settings = tunelab_config(like, paths)
    settings["train"] |= {"max_steps": steps}
    config = validate(settings)
    quiet_libraries()
    build_cached(config.model.source)
    accelerator = make_accelerator(config.train)
    torch.manual_seed(SEED)
    run = prepare_run(config, accelerator, print)
    model, optimizer = run.model, stepped_optimizer(run.optimizer, accelerator)
    dataset = run.data.datasets["train"]
    loader = DataLoader(dataset, config.train.batch_size, sampler=EpochShuffleSampler(len(dataset), SEED),
                        collate_fn=run.collate)  # fmt: skip
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    class Clock(Callback):  # fit's own set-up (once per run, not per step) stays outside the block
        def on_train_start(self, *args):
            self.started = time.perf_counter()

        def on_train_end(self, *args):
            self.seconds = time.perf_counter() - self.started

    def tunelab_block() -> float:
        clock, schedule = Clock(), build_scheduler(optimizer, config.schedule, 10**6)
        state = TrainState(total_steps=steps, steps_per_epoch=len(run.train_dl))
        trainee = Trainee(model, run.optimizer, schedule, run.train_dl, run.task.loss_function(),
                          run.strategy.train_mode, sampler=run.sampler)  # fmt: skip
        fit(trainee, accelerator, config.train, [run.strategy, clock], state)
        assert state.step == steps
        return clock.seconds / steps

    def plain_block() -> float:
        schedule = build_scheduler(optimizer, config.schedule, 10**6)
        started = time.perf_counter()
        plain_steps(model, loader, parameters, optimizer, schedule, steps)  # as many epochs as that takes, as fit does
        return (time.perf_counter() - started) / steps

    tunelab_block(), plain_block()  # the first call of each sets up its kernels and iterators
    tunelab, plain = [], []
    for pair in range(PAIRS):  # which goes first alternates too
        for block, times in ((tunelab_block, tunelab), (plain_block, plain))[:: 1 if pair % 2 else -1]:
            times.append(block())
    return {
        "tunelab_ms_per_step": 1000 * statistics.median(tunelab), "plain_ms_per_step": 1000 * statistics.median(plain),
        "ratio": statistics.median(p / t for t, p in zip(tunelab, plain, strict=True)),
        "pairs": PAIRS, "steps_per_block": steps,
    }  # fmt: skip


# --- the side-by-side driver ------------------------------------------------------------------


def run_one(framework: str, scenario: str, paths: dict, cache: Path, seed: int) -> dict:
    """One run in a fresh process; its peak RSS is read by that process itself."""
    command = [sys.executable, __file__, "--worker", framework, "--scenario", scenario, "--paths", json.dumps(paths)]
    command += ["--seed", str(seed)]
    # The run's own folders (models, Trainer's output) go in a scratch folder removed after it.
    scratch = cache.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TUNELAB_CACHE": str(cache)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env | {"TMPDIR": str(scratch)}, check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{framework} on {scenario} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(found: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for scenario, frameworks in found["scenarios"].items():
        view = Table(title=f"{scenario} (median of {found['repeats_per_scenario'][scenario]})")
        if scenario in PAIRED:
            columns = ("steps per block", "pairs", "tunelab ms/step", "plain ms/step", "tunelab/plain")
            for column in columns:
                view.add_column(column, justify="right")
            row = frameworks["tunelab-vs-plain"]
            view.add_row(
                f"{row['steps_per_block']:.0f}", f"{row['pairs']:.0f}", f"{row['tunelab_ms_per_step']:.1f}",
                f"{row['plain_ms_per_step']:.1f}", f"{row['ratio']:.3f}",
            )  # fmt: skip
            console.print(view)
            continue
        if scenario.startswith("startup"):
            for column in ("run", "train rows", "s to first step", "peak RSS MB"):
                view.add_column(column, justify="right")
            for name, row in frameworks.items():
                view.add_row(name, f"{row['rows']:.0f}", f"{row['startup_seconds']:.1f}", f"{row['peak_rss_mb']:.0f}")
            console.print(view)
            continue
        for column in ("framework", "samples/s", "s per epoch", "peak RSS MB", "accuracy", "vs tunelab"):
            view.add_column(column, justify="right")
        reference = frameworks["tunelab"]["epoch_seconds"]
        for name, row in frameworks.items():
            view.add_row(
                name, f"{row['samples_per_second']:.1f}", f"{row['epoch_seconds']:.2f}", f"{row['peak_rss_mb']:.0f}",
                f"{row['accuracy']:.3f}", f"{row['epoch_seconds'] / reference:.2f}x",
            )  # fmt: skip
        console.print(view)
    for claim, value in found["summary"].items():
        console.print(f"{claim}: {value}")


def summary(scenarios: dict) -> dict:
    """The ratios the performance issue asks for, from whichever scenarios ran."""
    found = {}
    for scenario in ("identical-full", "identical-lora", "digits-cnn"):
        if scenario in scenarios:
            rows = scenarios[scenario]
            found[f"{scenario}: tunelab / plain loop throughput"] = round(
                rows["tunelab"]["samples_per_second"] / rows["plain"]["samples_per_second"], 3
            )
    if "defaults" in scenarios:
        rows = scenarios["defaults"]
        for other in ("trainer", "trainer-grouped"):
            found[f"defaults: {other} / tunelab seconds per epoch"] = round(
                rows[other]["epoch_seconds"] / rows["tunelab"]["epoch_seconds"], 3
            )
        found["defaults: dev accuracy tunelab, trainer, trainer-grouped"] = [
            round(rows[name]["accuracy"], 4) for name in ("tunelab", "trainer", "trainer-grouped")
        ]
    if "identical-full" in scenarios and "identical-lora" in scenarios:
        found["peak RSS MB tunelab full, lora"] = [
            round(scenarios[name]["tunelab"]["peak_rss_mb"]) for name in ("identical-full", "identical-lora")
        ]
    for scenario in PAIRED:
        if scenario in scenarios:
            found[f"{scenario}: tunelab / plain loop throughput, paired in one process"] = round(
                scenarios[scenario]["tunelab-vs-plain"]["ratio"], 3
            )
    for scenario in ("startup", "startup-full"):
        if scenario in scenarios:
            seconds = {run: row["startup_seconds"] for run, row in scenarios[scenario].items()}
            found[f"{scenario}: first / cached second run seconds to first step"] = round(
                seconds["first"] / seconds["second"], 2
            )
            if "imports" in seconds:
                floor = seconds["imports"]
                found[f"{scenario}: the same, past the imports alone ({floor:.1f} s)"] = round(
                    (seconds["first"] - floor) / (seconds["second"] - floor), 2
                )
    return found


def merged(found: dict) -> dict:
    """This run's scenarios added to those already written for the same machine, model, rows and
    (so ``--scenarios`` can redo one, with its own ``--repeats``, without losing the rest)."""
    if not OUT.exists():
        return found
    previous = json.loads(OUT.read_text(encoding="utf-8"))
    if any(previous.get(key) != found[key] for key in ("cpu", "threads", "torch", "model", "rows")):
        return found
    # Files written before repeats were kept per scenario had one count for all.
    previous.setdefault("repeats_per_scenario", dict.fromkeys(previous.get("scenarios", {}), previous.get("repeats")))
    return found | {key: previous.get(key, {}) | found[key] for key in ("runs", "scenarios", "repeats_per_scenario")}


def machine() -> dict:
    import lightning
    import torch
    import transformers

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "machine": platform.machine(), "cpu": model, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "lightning": lightning.__version__,
    }  # fmt: skip


def main() -> int:
    global SEED  # a worker's runs use the seed it was given
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--worker")
    parser.add_argument("--scenario")
    parser.add_argument("--paths")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    if args.worker:
        SEED = args.seed  # the run's seed; the 2,000 rows stay the same draw
        result = worker(args.worker, args.scenario, json.loads(args.paths))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0
    # Bytecode for tunelab's own modules, as an installed package has (see the docstring).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "tunelab")], check=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_rows(Path(folder), args.rows)
        found = machine() | {
            "model": "all-MiniLM-L6-v2" if paths["model"] == "minilm" else "tiny random BERT",
            "rows": args.rows, "repeats": args.repeats, "runs": {}, "scenarios": {}, "repeats_per_scenario": {},
        }  # fmt: skip
        for scenario in args.scenarios.split(","):
            runs = {framework: [] for framework in SCENARIOS[scenario]}
            for repeat in range(args.repeats):  # alternating: each repeat runs every framework once
                # Start-up is timed from an empty cache each repeat; the other scenarios share one.
                cache = Path(folder) / (f"cache-{scenario}-{repeat}" if scenario.startswith("startup") else "cache")
                # Defaults are compared on accuracy too, so each repeat there has its own seed.
                seed = SEED + repeat if scenario == "defaults" else SEED
                for framework in SCENARIOS[scenario]:
                    runs[framework].append(run_one(framework, scenario, paths, cache, seed))
                    print(f"{scenario} {repeat + 1}/{args.repeats} {framework}: {runs[framework][-1]}", flush=True)
            found["runs"][scenario] = runs
            found["repeats_per_scenario"][scenario] = args.repeats
            found["scenarios"][scenario] = {
                framework: {key: statistics.median(run[key] for run in done) for key in done[0]}
                for framework, done in runs.items()
            }
    found = merged(found)
    found["summary"] = summary(found["scenarios"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    table(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
