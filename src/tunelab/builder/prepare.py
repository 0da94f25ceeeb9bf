"""The prepare phase: data read and checked, the model built with its strategy and optimizer,
the loaders made, everything handed to Accelerate. Train, lr-find, tune and distill all start here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from tunelab.config import RunConfig
from tunelab.data import PreparedData, RawData, prepare_data, read_data
from tunelab.data.audit import quick_checks
from tunelab.data.augment import without_augmentation
from tunelab.engine.data_loading import OnDevice, eval_loader, loading_options, train_loader
from tunelab.engine.optim import build_optimizer
from tunelab.evaluate import balanced_weights, model_inputs
from tunelab.models import LoadedModel, load_model
from tunelab.models.loading import count_parameters
from tunelab.strategies import Strategy, build_strategy
from tunelab.tasks import Task, get_task


@dataclass
class PreparedRun:
    """Everything a run trains with, built the same way for train, lr-find, tune and distill."""

    task: Task
    raw: RawData
    data: PreparedData
    loaded: LoadedModel
    strategy: Strategy
    model: torch.nn.Module  # prepared by Accelerate
    optimizer: torch.optim.Optimizer
    groups: list[dict]  # per optimizer group: name, lr, parameters
    trainable: int
    total: int
    collate: object  # rows -> batch
    train_dl: torch.utils.data.DataLoader
    sampler: object  # the train loader's sampler (its position is part of a checkpoint)
    eval_dls: dict[str, torch.utils.data.DataLoader]
    eval_groups: dict[str, list[str]]
    data_warnings: list[str]

    @property
    def targets(self):
        """The label map (classes) or numeric target the model puts out."""
        return self.data.labels

    def score(self):
        """This run's metrics of a split: ``score(logits, labels, groups=None)``."""
        return self.task.scorer(self.targets)


def prepare_run(config: RunConfig, accelerator, warn) -> PreparedRun:
    """Read and check the data, build the model with its strategy and optimizer, and the loaders,
    prepared by Accelerate. With ``optim.lr: auto`` the groups are built at rate 1 (their ratios
    kept) until the range test sets them."""
    task = get_task(config)
    raw = read_data(config)
    data_warnings = quick_checks(raw.splits, classes=task.has_classes)
    for line in data_warnings:
        warn(line)
    loaded = load_model(config, raw.labels, raw.channels)
    data = prepare_data(raw, loaded, config)
    for name, count in data.truncated.items():
        if count:
            data_warnings.append(task.cut_warning(name, count, len(data.datasets[name]), config.data.max_length))
            warn(data_warnings[-1])
    strategy = build_strategy(config.strategy, loaded.fresh_head)
    model = strategy.apply(loaded.model)
    if config.train.quantization_aware:
        from tunelab.compress.quantize import aware

        model = aware(model, example_inputs(data.datasets["train"], task.collate(loaded, config)))
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
    collate = task.collate(loaded, config)
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
        task, raw, data, loaded, strategy, model, optimizer, groups, trainable, total, collate, train_dl, sampler,
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


def class_weights_for(config: RunConfig, raw: RawData) -> torch.Tensor | None:
    """``train.class_weights: balanced``: inverse class frequency in train, else None."""
    if config.train.class_weights != "balanced":
        return None
    return balanced_weights(raw.labels.encode(raw.splits["train"].labels, "data.train"), len(raw.labels))


def find_rate(run: PreparedRun, config: RunConfig, accelerator, class_weights=None, console=None) -> dict:
    """The range test on the run's own model, strategy and data; the optimizer's groups are left at
    the suggested rate (their ratios kept) and everything else as it was."""
    from tunelab.search.lr_range import range_test

    # A loader of its own: a half-read prepared loader would stay registered with Accelerate.
    loader, _ = train_loader(
        run.data.datasets["train"], config.train.batch_size, run.collate, config.seed, config.train.group_by_length
    )
    loss_fn = run.task.loss_function(class_weights)
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


def example_inputs(dataset: Dataset, collate) -> dict:
    """One training row as model inputs: what FX traces the model with."""
    return model_inputs(collate([dataset[0]]))


def _trains_batch_norm(model: torch.nn.Module, config: RunConfig) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return not config.strategy.freeze_norm_stats and any(isinstance(m, _BatchNorm) for m in model.modules())


def _evaluation_sets(data: PreparedData, config: RunConfig) -> tuple[dict, dict]:
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
