"""One fine-tuning run as named phases: start, protect (the loss and what guards against
forgetting), schedule, baseline (or resume), fit, finish, results, save. ``run_training`` walks
them in order; each is public for a caller who needs one layer (a study's trial, a notebook).

The order matters for reproducibility: every phase draws from the seeded random streams in the
order a run always has, so a run built here is bit-identical to one built before the phases had
names, and a resumed run to an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import set_seed
from rich.console import Console

from tunelab.builder.prepare import PreparedRun, class_weights_for, example_inputs, find_rate, prepare_run
from tunelab.builder.runtime import make_accelerator, peak_memory_mb, process_started_at, quiet_libraries
from tunelab.collector import set_up_uncollected
from tunelab.compress.quantize import measured_as_float
from tunelab.config import RunConfig, dump_config
from tunelab.engine.callbacks import BestWeights, EarlyStopping, MetricsFile, ProgressBar, TrainState
from tunelab.engine.checkpoint import Checkpointer, complete_checkpoints, load_latest, truncate_lines
from tunelab.engine.data_loading import eval_loader
from tunelab.engine.interrupt import stopping_at_step_boundary
from tunelab.engine.lean import stepped_optimizer
from tunelab.engine.loop import Trainee, fit
from tunelab.engine.schedules import build_scheduler
from tunelab.errors import UserError
from tunelab.evaluate import evaluate_split, evaluate_splits
from tunelab.evaluate.remembered import Remembered
from tunelab.forgetting.setup import forgetting_results, setup_forgetting
from tunelab.io import folder_megabytes, write_atomic, write_json
from tunelab.loss import TrainingLoss
from tunelab.models import save_model
from tunelab.models.adapted import without_adapter
from tunelab.models.builtin import build_cached
from tunelab.models.card import write_model_card
from tunelab.models.loading import portable_base_name
from tunelab.rundir import BEST, CHECKPOINTS, CONFIG, METRICS, MODEL, REPORT, RESULTS


@dataclass
class Training:
    """A run in progress: what each phase hands to the next."""

    config: RunConfig
    run_dir: Path
    console: Console
    progress: bool
    resume: bool
    accelerator: object
    run: PreparedRun
    state: TrainState
    class_weights: object = None
    remembered: Remembered | None = None
    forgetting: object = None  # forgetting.setup.ForgettingRun
    loss_fn: object = None
    stateful: dict = field(default_factory=dict)  # checkpointed alongside the model
    early_stopping: EarlyStopping | None = None
    lr_found: dict | None = None
    scheduler: object = None
    restored: dict | None = None
    base: dict = field(default_factory=dict)
    earlier_seconds: float = 0.0  # trained before a resume
    train_seconds: float = 0.0
    startup_seconds: float = 0.0
    final: dict = field(default_factory=dict)
    quantization: tuple | None = None  # (setting, int8 model, scores) after quantization-aware training
    final_forgetting: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def bars(self) -> Console | None:
        return self.console if self.progress else None

    def warn(self, message: str) -> None:
        _warner(self.console, self.main)(message)


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
        training = start(config, Path(run_dir), console, progress, resume)
        protect(training)
        schedule(training)
        baseline_or_resume(training)
        train(training, callbacks, interruptible)
        finish(training)
        results = collect_results(training)
        save(training, results)
        return results


def start(config: RunConfig, run_dir: Path, console: Console | None, progress: bool, resume: bool) -> Training:
    """The Accelerator, the seed, the prepared run and its step count; config.yaml written."""
    quiet_libraries()
    console = console or Console(stderr=True)
    # Built before this run makes its Accelerator and seeds: building is a nested run that would
    # reset both (losing grad_accum_steps and mixed_precision, shifting every random draw).
    build_cached(config.model.source)
    accelerator = make_accelerator(config.train)
    if accelerator.is_main_process and not resume:
        write_atomic(run_dir / CONFIG, dump_config(config))
    set_seed(config.seed)
    warn = _warner(console, accelerator.is_main_process)
    run = prepare_run(config, accelerator, warn)
    steps_per_epoch = -(-len(run.train_dl) // config.train.grad_accum_steps)
    total_steps = config.train.max_steps or steps_per_epoch * config.train.epochs
    if config.train.max_steps and not resume:
        epochs = f"{config.train.max_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch}"
        warn(f"train.max_steps: {total_steps} steps ({epochs}) in place of train.epochs")
    state = TrainState(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    training = Training(config, run_dir, console, progress, resume, accelerator, run, state)
    training.class_weights = class_weights_for(config, run.raw)
    return training


def protect(training: Training) -> None:
    """The loss: the task's own plus the terms that keep the base model's skills (forgetting
    methods) and a teacher's (distillation); the callbacks whose state a checkpoint keeps."""
    config, run, accelerator = training.config, training.run, training.accelerator
    # Measured before training, at most once per model and data: a rerun reads them from disk.
    shaping = {"task": config.task, "model": config.model.model_dump(), "strategy": config.strategy.model_dump()}
    shaping["train"] = config.train.model_dump(include={"compile", "channels_last", "quantization_aware"})
    training.remembered = Remembered(accelerator.unwrap_model(run.model), accelerator, config.evaluate.cache, shaping)
    with measured_as_float(run.model):
        training.forgetting = setup_forgetting(
            config, run.loaded, run.model, accelerator, run.collate, run.data.datasets, training.remembered
        )
    forgetting = training.forgetting
    terms = list(forgetting.terms) if forgetting is not None else []
    task_weight = 1.0
    if config.distill is not None:
        terms += _distillation(config, run, accelerator)
        task_weight = 1 - config.distill.alpha
    pad_token_id = getattr(run.loaded.tokenizer, "pad_token_id", 0) or 0  # for replayed rows
    training.loss_fn = TrainingLoss(run.task, terms, training.class_weights, task_weight, pad_token_id)
    if config.train.early_stopping:
        stopping = config.train.early_stopping
        lower = config.train.metric in run.task.lower_is_better
        training.early_stopping = EarlyStopping(config.train.metric, stopping.patience, stopping.min_delta, lower)
    training.stateful = {"strategy": run.strategy, "loss": training.loss_fn}  # the loss: where replay has got to
    if training.early_stopping:
        training.stateful["early_stopping"] = training.early_stopping


def schedule(training: Training) -> None:
    """The learning rate (found by a range test for ``optim.lr: auto``) and its schedule."""
    config, run_dir = training.config, training.run_dir
    if config.optim.lr == "auto" and not (training.resume and complete_checkpoints(run_dir / CHECKPOINTS)):
        console = training.console if training.progress and training.main else None
        found = find_rate(training.run, config, training.accelerator, training.class_weights, console)
        if training.main:
            training.console.print(f"learning rate: {found['suggested']:.3g} (range test: {found['stopped']})")
        training.lr_found = found
    optimizer = stepped_optimizer(training.run.optimizer, training.accelerator)
    training.scheduler = build_scheduler(optimizer, config.schedule, training.state.total_steps)


def baseline_or_resume(training: Training) -> None:
    """Resume: the newest checkpoint restored. Otherwise the base model scored on every split."""
    run, accelerator, run_dir, main = training.run, training.accelerator, training.run_dir, training.main
    refused: list[str] = []
    restored = None
    if training.resume:
        restored = load_latest(
            run_dir / CHECKPOINTS, accelerator, run.model, run.optimizer, training.scheduler, refused.append
        )
    if training.resume and restored is None and refused:  # starting over would discard the run's progress unasked
        raise UserError(
            f"--resume: every checkpoint of {run_dir} was refused ({'; '.join(refused)}); "
            f"tunelab train --resume {run_dir} --restart starts the run again from step 0"
        )
    for line in refused:
        training.warn(line)
    if training.resume and restored is None:
        training.warn("no checkpoint to resume from (the run stopped before its first); starting it from the beginning")
        if main:
            truncate_lines(run_dir / METRICS, 0)
    training.restored = restored
    if restored:
        state = training.state
        state.load_state_dict(restored["train_state"])
        if restored["rng"]:  # this process's own unlogged loss, not the main process's
            state.running_loss, state.running_count = restored["rng"]["running"]
        for name, obj in training.stateful.items():
            obj.load_state_dict(restored["callbacks"][name])
        if main:
            truncate_lines(run_dir / METRICS, restored["metrics_lines"])
        training.base, training.earlier_seconds = restored["extra"]["base"], restored["extra"]["train_seconds"]
        training.lr_found = restored["extra"].get("lr_found")
        if main:
            training.console.print(f"resuming from {Path(restored['folder']).name} (step {state.step})")
    elif training.config.evaluate.base:
        training.base = _base_scores(training)


def _base_scores(training: Training) -> dict:
    run, accelerator = training.run, training.accelerator
    with measured_as_float(run.model), without_adapter(run.model, accelerator.unwrap_model(run.model)) as base_model:
        score = lambda: evaluate_splits(  # noqa: E731
            base_model, run.eval_dls, accelerator, run.score(), training.bars, "base model", run.eval_groups
        )
        key = {"labels": len(run.targets), "groups": run.eval_groups} | run.targets.to_meta()
        return training.remembered.scores("base", run.eval_dls, key, score)


def train(training: Training, callbacks: tuple = (), interruptible: bool = False) -> None:
    """The loop, with the run's callbacks: the strategy, early stopping, metrics file, best
    weights, checkpoints, progress bar, then the caller's; Ctrl-C handled if ``interruptible``."""
    config, run, accelerator, run_dir = training.config, training.run, training.accelerator, training.run_dir
    started = time.perf_counter()
    training.startup_seconds = time.time() - process_started_at()
    checkpointer = Checkpointer(
        run_dir / CHECKPOINTS,
        config.train.checkpoint_every,
        config.train.keep_checkpoints,
        accelerator,
        run.model,
        run.optimizer,
        training.scheduler,
        training.stateful,
        run_dir / METRICS,
        lambda: {
            "base": training.base,
            "train_seconds": training.earlier_seconds + time.perf_counter() - started,
            "lr_found": training.lr_found,
            "config": config.model_dump(mode="json"),  # an edited config.yaml is refused on resume
        },
    )
    metric = config.train.metric
    lower = metric in run.task.lower_is_better
    callbacks = [
        run.strategy,
        *([training.early_stopping] if training.early_stopping else []),
        MetricsFile(run_dir / METRICS, training.main),
        BestWeights(metric, run_dir / BEST, accelerator, config.train.load_best_at_end, lower),
        checkpointer,
        ProgressBar(training.console, training.progress and training.main, metric),
        *callbacks,
    ]
    score = run.score()
    processes = accelerator.num_processes if interruptible else 0  # 0: leave Ctrl-C as it is
    with stopping_at_step_boundary(checkpointer, len(run.train_dl), processes) as on_interrupt:
        trainee = Trainee(
            run.model,
            run.optimizer,
            training.scheduler,
            run.train_dl,
            training.loss_fn,
            run.strategy.train_mode,
            lambda: evaluate_split(run.model, run.eval_dls["validation"], accelerator, score),
            run.sampler,
        )
        training.state = fit(
            trainee,
            accelerator,
            config.train,
            callbacks + on_interrupt,  # last: it sees the step after every other callback has
            training.state,
            resume_rng=training.restored["rng"] if training.restored else None,
        )
    training.train_seconds = training.earlier_seconds + time.perf_counter() - started


def finish(training: Training) -> None:
    """The fine-tuned model scored on every split; int8 conversion after quantization-aware
    training; what the base model's skills kept."""
    run, accelerator = training.run, training.accelerator
    training.final = evaluate_splits(
        run.model, run.eval_dls, accelerator, run.score(), training.bars, "fine-tuned model", run.eval_groups
    )
    if training.config.train.quantization_aware:
        setting, int8, aware_scores = _converted(accelerator.unwrap_model(run.model), run, training.config)
        aware_scores["fake_quantized"] = {split: training.final[split] for split in aware_scores["int8"]}
        training.final |= aware_scores["int8"]  # the saved model is the int8 one: its scores are the run's
        training.quantization = (setting, int8, aware_scores)
    if training.forgetting is not None:
        training.final_forgetting = forgetting_results(run.model, training.forgetting, accelerator)


def collect_results(training: Training) -> dict:
    """results.json: what the run was, what it bought (base vs fine-tuned, per split) and cost."""
    config, run, state, accelerator = training.config, training.run, training.state, training.accelerator
    data = run.data
    results = {
        "task": config.task,
        "model_source": config.model.source,
        "strategy": config.strategy.name,
        "strategy_details": run.strategy.describe(accelerator.unwrap_model(run.model)),
        "optimizer_groups": _rated(run.groups, training.lr_found),
        "lr_found": _curve_free(training.lr_found),
        "labels": list(data.labels.names),
        "examples": {name: len(ds) for name, ds in data.datasets.items()},
        "truncated": data.truncated,
        "data_notes": data.notes,
        "data_warnings": run.data_warnings,
        "preparation": run.raw.preparation,
        "group_column": config.data.group_column,
        "fresh_head": run.loaded.fresh_head,
        "parameters": {
            "trainable": run.trainable,
            "total": run.total,
            "trainable_percent": 100 * run.trainable / run.total,
        },
        "base": training.base,
        "final": training.final,
        "gap": _train_validation_gap(training.final, run.task.gap_metrics),
        "train_seconds": training.train_seconds,
        "startup_seconds": training.startup_seconds,  # process start to training (or to resuming it)
        "tokens_from_cache": data.tokens_from_cache,
        "measured_from_cache": training.remembered.from_cache,  # base scores, drift features
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
    } | data.labels.to_meta()
    if training.forgetting is not None:
        methods = config.forgetting.model_dump(exclude_none=True)
        results |= training.final_forgetting | {"forgetting_methods": methods}
    if training.quantization is not None:
        results["quantization_aware"] = training.quantization[2]
    return results


def save(training: Training, results: dict) -> None:
    """The model folder, results.json, the model card and report.html (main process only)."""
    run, accelerator, run_dir = training.run, training.accelerator, training.run_dir
    if training.main:
        quantization = training.quantization
        saved = quantization[1] if quantization is not None else accelerator.unwrap_model(run.model)
        setting = quantization[0] if quantization is not None else None
        save_model(run.loaded, saved, run_dir / MODEL, run.data.labels, training.config.task, setting)
        results["saved_model_mb"] = folder_megabytes(run_dir / MODEL)
        write_json(run_dir / RESULTS, results)
        write_model_card(run_dir / MODEL, results, portable_base_name(run.loaded))
        from tunelab.report import write_report

        write_report(run_dir, run_dir / REPORT)
    accelerator.wait_for_everyone()


def _warner(console: Console, main: bool):
    def warn(message: str) -> None:
        if main:
            console.print(f"[yellow]warning:[/] {message}")

    return warn


def _distillation(config: RunConfig, run: PreparedRun, accelerator) -> list:
    """The teacher run's model, frozen beside the student, as terms of the loss."""
    from tunelab.compress.distill import distillation_terms
    from tunelab.forgetting.heads import HeadTap
    from tunelab.models import load_saved_model
    from tunelab.rundir import existing_run

    teacher_dir = existing_run(config.distill.teacher)
    teacher = load_saved_model(teacher_dir / MODEL).model.to(accelerator.device)
    taps = (None, None)
    if config.distill.hidden > 0:
        taps = (HeadTap(accelerator.unwrap_model(run.model)), HeadTap(teacher))
    return distillation_terms(teacher, config.distill, *taps)


def _converted(model, run: PreparedRun, config: RunConfig) -> tuple[dict, object, dict]:
    """The quantization-aware model turned int8, scored on the CPU beside its fake-quantized self."""
    from tunelab.compress.measure import scores
    from tunelab.compress.quantize import converted

    int8 = converted(model)
    example = example_inputs(run.data.datasets["train"], run.collate)
    splits = {name: ds for name, ds in run.data.datasets.items() if name in ("validation", "test")}
    size = config.train.eval_batch_size
    int8_scores = {name: scores(int8, eval_loader(ds, size, run.collate), run.score()) for name, ds in splits.items()}
    setting = {"method": "qat", "backend": "x86", "example": {k: list(v.shape) for k, v in example.items()}}
    return setting, int8, {"int8": int8_scores}


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


def _train_validation_gap(final: dict, metrics: tuple[str, ...]) -> dict:
    if "train" not in final or "validation" not in final:
        return {}
    return {
        metric: final["train"][metric] - final["validation"][metric]
        for metric in metrics
        if final["train"].get(metric) is not None and final["validation"].get(metric) is not None
    }
