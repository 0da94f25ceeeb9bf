"""`tunelab train`: one fine-tuning run from a validated config to a finished run directory."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from rich.console import Console
from torch.utils.data import Subset

from tunelab.collector import set_up_uncollected
from tunelab.compress.quantize import measured_as_float
from tunelab.config import RunConfig, dump_config
from tunelab.data import prepare_data, read_data
from tunelab.data.audit import quick_checks
from tunelab.data.augment import without_augmentation
from tunelab.data.collate import make_collate
from tunelab.engine.callbacks import BestWeights, EarlyStopping, MetricsFile, ProgressBar, TrainState
from tunelab.engine.checkpoint import Checkpointer, complete_checkpoints, load_latest, truncate_lines
from tunelab.engine.data_loading import OnDevice, eval_loader, loading_options, train_loader
from tunelab.engine.interrupt import stopping_at_step_boundary
from tunelab.engine.lean import stepped_optimizer
from tunelab.engine.loop import fit
from tunelab.engine.optim import build_optimizer
from tunelab.engine.schedules import build_scheduler
from tunelab.errors import UserError
from tunelab.evaluate import balanced_weights, classification_loss, evaluate_split, evaluate_splits, model_inputs
from tunelab.evaluate.remembered import Remembered
from tunelab.forgetting.setup import forgetting_results, setup_forgetting
from tunelab.io import folder_megabytes, write_atomic, write_json
from tunelab.models import load_model, save_model
from tunelab.models.adapted import without_adapter
from tunelab.models.builtin import build_cached
from tunelab.models.card import write_model_card
from tunelab.models.loading import count_parameters, portable_base_name
from tunelab.recipes.runtime import make_accelerator, peak_memory_mb, process_started_at, quiet_libraries
from tunelab.rundir import BEST, CHECKPOINTS, CONFIG, METRICS, MODEL, REPORT, RESULTS
from tunelab.strategies import build_strategy


def run_training(
    config: RunConfig,
    run_dir: Path,
    console: Console | None = None,
    progress: bool = True,
    resume: bool = False,
    callbacks: tuple = (),
    interruptible: bool = False,
) -> dict:
    """Train, evaluate before and after, save the model, results and report. Returns results.
    ``callbacks`` join the run's own (a tuning study's pruning, say). ``interruptible``: Ctrl-C
    stops at a step boundary with a checkpoint, for ``--resume`` (the train command's runs only).

    With ``resume`` the newest verified checkpoint in ``run_dir`` is restored (weights,
    optimizer, schedule, every RNG, the position in the epoch, callback state) and the run
    continues as if it had never stopped.
    """
    with set_up_uncollected():  # until the model is loaded (the command line pauses it sooner)
        return _run_training(config, run_dir, console, progress, resume, callbacks, interruptible)


def _run_training(
    config: RunConfig, run_dir: Path, console, progress: bool, resume: bool, callbacks: tuple, interruptible: bool
) -> dict:
    quiet_libraries()
    console = console or Console(stderr=True)
    # Built before this run makes its Accelerator and seeds: building is a nested run that would
    # reset both (losing grad_accum_steps and mixed_precision, shifting every random draw).
    build_cached(config.model.source)
    accelerator = make_accelerator(config.train)
    main = accelerator.is_main_process
    warn = _warner(console, main)
    if main and not resume:
        write_atomic(run_dir / CONFIG, dump_config(config))
    set_seed(config.seed)

    run = prepare_run(config, accelerator, warn)
    raw, data, loaded, strategy = run.raw, run.data, run.loaded, run.strategy
    model, optimizer, train_dl, sampler, collate = run.model, run.optimizer, run.train_dl, run.sampler, run.collate
    eval_dls, eval_groups, data_warnings = run.eval_dls, run.eval_groups, run.data_warnings
    num_labels = len(data.labels)
    class_weights = class_weights_for(config, raw, num_labels)

    bars = console if progress else None
    steps_per_epoch = -(-len(train_dl) // config.train.grad_accum_steps)
    total_steps = config.train.max_steps or steps_per_epoch * config.train.epochs
    if config.train.max_steps and not resume:
        epochs = f"{config.train.max_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch}"
        warn(f"train.max_steps: {total_steps} steps ({epochs}) in place of train.epochs")
    state = TrainState(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    # Measured before training, at most once per model and data: a rerun reads them from disk.
    shaping = {"task": config.task, "model": config.model.model_dump(), "strategy": config.strategy.model_dump()}
    shaping["train"] = config.train.model_dump(include={"compile", "channels_last", "quantization_aware"})
    remembered = Remembered(accelerator.unwrap_model(model), accelerator, config.evaluate.cache, shaping)
    with measured_as_float(model):
        forgetting = setup_forgetting(
            config, loaded, model, accelerator, collate, data.datasets, class_weights, remembered
        )
    if forgetting is not None and forgetting.loss is not None:
        loss_fn = forgetting.loss
    elif class_weights is not None:
        loss_fn = functools.partial(classification_loss, weights=class_weights)
    else:
        loss_fn = classification_loss
    if config.distill is not None:
        loss_fn = _distillation(config, run, accelerator, class_weights)
    early_stopping = None
    if config.train.early_stopping:
        stopping = config.train.early_stopping
        early_stopping = EarlyStopping(config.train.metric, stopping.patience, stopping.min_delta)
    stateful = {"strategy": strategy} | ({"early_stopping": early_stopping} if early_stopping else {})
    if loss_fn is getattr(forgetting, "loss", None):
        stateful["forgetting"] = loss_fn  # where replay has got to

    lr_found = None
    if config.optim.lr == "auto" and not (resume and complete_checkpoints(run_dir / CHECKPOINTS)):
        lr_found = find_rate(run, config, accelerator, class_weights, console if progress and main else None)
        if main:
            console.print(f"learning rate: {lr_found['suggested']:.3g} (range test: {lr_found['stopped']})")
    scheduler = build_scheduler(stepped_optimizer(optimizer, accelerator), config.schedule, total_steps)
    refused: list[str] = []
    restored = None
    if resume:
        restored = load_latest(run_dir / CHECKPOINTS, accelerator, model, optimizer, scheduler, refused.append)
    if resume and restored is None and refused:  # starting over would discard the run's progress unasked
        raise UserError(
            f"--resume: every checkpoint of {run_dir} was refused ({'; '.join(refused)}); "
            f"tunelab train --resume {run_dir} --restart starts the run again from step 0"
        )
    for line in refused:
        warn(line)
    if resume and restored is None:
        warn("no checkpoint to resume from (the run stopped before its first); starting it from the beginning")
        if main:
            truncate_lines(run_dir / METRICS, 0)
    if restored:
        state.load_state_dict(restored["train_state"])
        if restored["rng"]:  # this process's own unlogged loss, not the main process's
            state.running_loss, state.running_count = restored["rng"]["running"]
        for name, obj in stateful.items():
            obj.load_state_dict(restored["callbacks"][name])
        if main:
            truncate_lines(run_dir / METRICS, restored["metrics_lines"])
        base, earlier_seconds = restored["extra"]["base"], restored["extra"]["train_seconds"]
        lr_found = restored["extra"].get("lr_found")
        if main:
            console.print(f"resuming from {Path(restored['folder']).name} (step {state.step})")
    else:
        base = {}
        if config.evaluate.base:
            with measured_as_float(model), without_adapter(model, accelerator.unwrap_model(model)) as base_model:
                score = lambda: evaluate_splits(  # noqa: E731
                    base_model, eval_dls, accelerator, num_labels, bars, "base model", eval_groups
                )
                base = remembered.scores("base", eval_dls, {"labels": num_labels, "groups": eval_groups}, score)
        earlier_seconds = 0.0

    started = time.perf_counter()
    startup_seconds = time.time() - process_started_at()
    checkpointer = Checkpointer(
        run_dir / CHECKPOINTS,
        config.train.checkpoint_every,
        config.train.keep_checkpoints,
        accelerator,
        model,
        optimizer,
        scheduler,
        stateful,
        run_dir / METRICS,
        lambda: {
            "base": base,
            "train_seconds": earlier_seconds + time.perf_counter() - started,
            "lr_found": lr_found,
            "config": config.model_dump(mode="json"),  # an edited config.yaml is refused on resume
        },
    )
    callbacks = [
        strategy,
        *([early_stopping] if early_stopping else []),
        MetricsFile(run_dir / METRICS, main),
        BestWeights(config.train.metric, run_dir / BEST, accelerator, config.train.load_best_at_end),
        checkpointer,
        ProgressBar(console, progress and main, config.train.metric),
        *callbacks,
    ]
    processes = accelerator.num_processes if interruptible else 0  # 0: leave Ctrl-C as it is
    with stopping_at_step_boundary(checkpointer, len(train_dl), processes) as on_interrupt:
        state = fit(
            model,
            optimizer,
            scheduler,
            train_dl,
            loss_fn,
            lambda: evaluate_split(model, eval_dls["validation"], accelerator, num_labels),
            accelerator,
            config.train,
            callbacks + on_interrupt,  # last: it sees the step after every other callback has
            strategy.train_mode,
            sampler,
            state,
            resume_rng=restored["rng"] if restored else None,
        )
    train_seconds = earlier_seconds + time.perf_counter() - started
    final = evaluate_splits(model, eval_dls, accelerator, num_labels, bars, "fine-tuned model", eval_groups)

    quantization = None
    if config.train.quantization_aware:
        quantization, int8, aware_scores = _converted(accelerator.unwrap_model(model), run, config)
        aware_scores["fake_quantized"] = {split: final[split] for split in aware_scores["int8"]}
        final |= aware_scores["int8"]  # the saved model is the int8 one: its scores are the run's
    if forgetting is not None:
        final_forgetting = forgetting_results(model, forgetting, accelerator)
    results = {
        "task": config.task,
        "model_source": config.model.source,
        "strategy": config.strategy.name,
        "strategy_details": strategy.describe(accelerator.unwrap_model(model)),
        "optimizer_groups": _rated(run.groups, lr_found),
        "lr_found": _curve_free(lr_found),
        "labels": list(data.labels.names),
        "examples": {name: len(ds) for name, ds in data.datasets.items()},
        "truncated": data.truncated,
        "data_notes": data.notes,
        "data_warnings": data_warnings,
        "preparation": raw.preparation,
        "group_column": config.data.group_column,
        "fresh_head": loaded.fresh_head,
        "parameters": {
            "trainable": run.trainable,
            "total": run.total,
            "trainable_percent": 100 * run.trainable / run.total,
        },
        "base": base,
        "final": final,
        "gap": _train_validation_gap(final),
        "train_seconds": train_seconds,
        "startup_seconds": startup_seconds,  # process start to training (or to resuming it)
        "tokens_from_cache": data.tokens_from_cache,
        "measured_from_cache": remembered.from_cache,  # base scores, drift features
        "peak_memory_mb": peak_memory_mb(),
        "steps": state.step,
        "epochs_completed": state.epoch + 1,
        "stopped_early": bool(state.should_stop),
        "stop_reason": state.stop_reason,
        "diverged": state.diverged,
        "skipped_steps": state.skipped_steps,
        "best": {"metric": config.train.metric, "value": state.best_value, "step": state.best_step},
        "processes": accelerator.num_processes,
        "mixed_precision": config.train.mixed_precision,
    }
    if forgetting is not None:
        results |= final_forgetting | {"forgetting_methods": config.forgetting.model_dump(exclude_none=True)}
    if quantization is not None:
        results["quantization_aware"] = aware_scores
    if main:
        saved = int8 if quantization is not None else accelerator.unwrap_model(model)
        save_model(loaded, saved, run_dir / MODEL, data.labels, config.task, quantization)
        results["saved_model_mb"] = folder_megabytes(run_dir / MODEL)
        write_json(run_dir / RESULTS, results)
        write_model_card(run_dir / MODEL, results, portable_base_name(loaded))
        from tunelab.report import write_report

        write_report(run_dir, run_dir / REPORT)
    accelerator.wait_for_everyone()
    return results


@dataclass
class PreparedRun:
    """Everything a run trains with, built the same way for train, lr-find and tune."""

    raw: object
    data: object
    loaded: object
    strategy: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    groups: list[dict]
    trainable: int
    total: int
    collate: object
    train_dl: object
    sampler: object
    eval_dls: dict
    eval_groups: dict
    data_warnings: list[str]


def prepare_run(config: RunConfig, accelerator, warn) -> PreparedRun:
    """Read and check the data, build the model with its strategy and optimizer, and the loaders,
    prepared by Accelerate. With ``optim.lr: auto`` the groups are built at rate 1 (their ratios
    kept) until the range test sets them."""
    raw = read_data(config)
    data_warnings = quick_checks(raw.splits)
    for line in data_warnings:
        warn(line)
    loaded = load_model(config, raw.labels, raw.channels)
    data = prepare_data(raw, loaded, config)
    for name, count in data.truncated.items():
        if count:
            line = f"{name}: {count} of {len(data.datasets[name])} rows are longer than data.max_length"
            data_warnings.append(f"{line} ({config.data.max_length} tokens) and are cut")
            warn(data_warnings[-1])
    strategy = build_strategy(config.strategy, loaded.fresh_head)
    model = strategy.apply(loaded.model)
    if config.train.quantization_aware:
        from tunelab.compress.quantize import aware

        model = aware(model, _example(data.datasets["train"], make_collate(loaded, config.task)))
    _, total = count_parameters(model)
    speed_up(model, config.train, accelerator.device.type)
    if accelerator.num_processes > 1 and _trains_batch_norm(model, config):
        warn(
            "batch-norm statistics are computed per process under DDP, so results differ "
            "from one process; set strategy.freeze_norm_stats: true to keep them identical"
        )
    optim = config.optim.model_copy(update={"lr": 1.0}) if config.optim.lr == "auto" else config.optimizer_settings()
    optimizer = build_optimizer(strategy.parameter_groups(model, optim), optim)
    groups = [
        {"name": group["name"], "lr": group["lr"], "parameters": sum(p.numel() for p in group["params"])}
        for group in optimizer.param_groups
    ]
    trainable = sum(group["parameters"] for group in groups)  # by the end of the run, for progressive
    collate = make_collate(loaded, config.task)
    loading = loading_options(config.train.dataloader_workers, accelerator.device.type == "cuda")
    train = config.train
    train_dl, sampler = train_loader(
        data.datasets["train"], train.batch_size, collate, config.seed, train.group_by_length, train.grad_accum_steps,
        **loading,
    )  # fmt: skip
    eval_sets, eval_groups = _evaluation_sets(data, config)
    size = config.train.eval_batch_size
    eval_dls = {name: eval_loader(ds, size, collate, **loading) for name, ds in eval_sets.items()}
    model, optimizer, train_dl, *prepared = accelerator.prepare(model, optimizer, train_dl, *eval_dls.values())
    eval_dls = dict(zip(eval_dls, prepared, strict=True))
    return PreparedRun(
        raw, data, loaded, strategy, model, optimizer, groups, trainable, total, collate, train_dl, sampler,
        eval_dls, eval_groups, data_warnings,
    )  # fmt: skip


def speed_up(model: torch.nn.Module, train, device: str) -> None:
    """Channels-last memory for convolutional models (``auto``: on a GPU, where cuDNN's kernels
    want it) and ``torch.compile`` in place, so weights keep their names for saving."""
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if convolutional and (train.channels_last is True or (train.channels_last == "auto" and device == "cuda")):
        model.to(memory_format=torch.channels_last)
    if train.compile:
        model.compile()


def _distillation(config: RunConfig, run: PreparedRun, accelerator, class_weights):
    """The teacher run's model, frozen beside the student, in the loss."""
    from tunelab.compress.distill import DistillationLoss
    from tunelab.forgetting.heads import HeadTap
    from tunelab.models import load_saved_model
    from tunelab.rundir import existing_run

    teacher_dir = existing_run(config.distill.teacher)
    teacher = load_saved_model(teacher_dir / MODEL).model.to(accelerator.device)
    taps = (None, None)
    if config.distill.hidden > 0:
        taps = (HeadTap(accelerator.unwrap_model(run.model)), HeadTap(teacher))
    return DistillationLoss(teacher, config.distill, *taps, weights=class_weights)


def _example(dataset, collate) -> dict:
    """One training row as model inputs: what FX traces the model with."""
    return model_inputs(collate([dataset[0]]))


def _converted(model, run: PreparedRun, config: RunConfig) -> tuple[dict, torch.nn.Module, dict]:
    """The quantization-aware model turned int8, scored on the CPU beside its fake-quantized self."""
    from tunelab.compress.measure import scores
    from tunelab.compress.quantize import converted

    int8 = converted(model)
    example = _example(run.data.datasets["train"], run.collate)
    splits = {name: ds for name, ds in run.data.datasets.items() if name in ("validation", "test")}
    size, labels = config.train.eval_batch_size, len(run.data.labels)
    int8_scores = {name: scores(int8, eval_loader(ds, size, run.collate), labels) for name, ds in splits.items()}
    setting = {"method": "qat", "backend": "x86", "example": {k: list(v.shape) for k, v in example.items()}}
    return setting, int8, {"int8": int8_scores}


def find_rate(run: PreparedRun, config: RunConfig, accelerator, class_weights=None, console=None) -> dict:
    """The range test on the run's own model, strategy and data; the optimizer's groups are left at
    the suggested rate (their ratios kept) and everything else as it was."""
    from tunelab.search.lr_range import range_test

    # A loader of its own: a half-read prepared loader would stay registered with Accelerate.
    loader, _ = train_loader(
        run.data.datasets["train"], config.train.batch_size, run.collate, config.seed, config.train.group_by_length
    )
    loss_fn = functools.partial(classification_loss, weights=class_weights)
    settings = config.optim
    status = console.status("learning-rate range test ...") if console is not None else contextlib.nullcontext()
    with status:
        found = range_test(
            run.model, run.optimizer, OnDevice(loader, accelerator.device), loss_fn, accelerator,
            run.strategy.train_mode, settings.lr_find_start, settings.lr_find_end, settings.lr_find_steps,
        )  # fmt: skip
    for group, ratio in zip(run.optimizer.param_groups, [g["lr"] for g in run.groups], strict=True):
        group["lr"] = found["suggested"] * ratio
    return found


def _rated(groups: list[dict], lr_found: dict | None) -> list[dict]:
    """The groups with their rates: as configured, or (optim.lr: auto) the suggestion times their ratio."""
    if lr_found is None:
        return groups
    return [group | {"lr": lr_found["suggested"] * group["lr"]} for group in groups]


def _curve_free(found: dict | None) -> dict | None:
    """The range test's suggestions for results.json; its curve is in the lr-find report."""
    if found is None:
        return None
    return {key: value for key, value in found.items() if key not in ("rates", "losses", "smoothed")}


def class_weights_for(config: RunConfig, raw, num_labels: int) -> torch.Tensor | None:
    if config.train.class_weights != "balanced":
        return None
    return balanced_weights(raw.labels.encode(raw.splits["train"].labels, "data.train"), num_labels)


def _warner(console: Console, main: bool):
    def warn(message: str) -> None:
        if main:
            console.print(f"[yellow]warning:[/] {message}")

    return warn


def _trains_batch_norm(model: torch.nn.Module, config: RunConfig) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return not config.strategy.freeze_norm_stats and any(isinstance(m, _BatchNorm) for m in model.modules())


def _evaluation_sets(data, config: RunConfig) -> tuple[dict, dict]:
    """Every split with its examples' groups; train capped (seeded subset) since it only serves
    the overfitting gap."""
    sets, groups = dict(data.datasets), dict(data.groups)
    sets["train"] = without_augmentation(sets["train"])  # the gap compares train and validation alike
    cap = config.evaluate.max_train_examples
    if cap and len(sets["train"]) > cap:
        chosen = torch.randperm(len(sets["train"]), generator=torch.Generator().manual_seed(config.seed))[:cap]
        chosen = sorted(chosen.tolist())
        sets["train"] = Subset(sets["train"], chosen)
        if "train" in groups:
            groups["train"] = [groups["train"][i] for i in chosen]
    return sets, groups


def _train_validation_gap(final: dict) -> dict:
    if "train" not in final or "validation" not in final:
        return {}
    return {
        metric: final["train"][metric] - final["validation"][metric]
        for metric in ("loss", "accuracy", "f1")
        if final["train"].get(metric) is not None and final["validation"].get(metric) is not None
    }
