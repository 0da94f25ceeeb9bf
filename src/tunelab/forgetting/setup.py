"""Forgetting for one training run: what to measure (retain sets with the base model's own head,
feature drift) and what to add to the loss (EWC, L2-SP, LwF, replay), set up from the config
before training and scored after it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import ConcatDataset, Subset

from tunelab.data import RawData, prepare_data, read_data
from tunelab.engine.data_loading import OnDevice, eval_loader
from tunelab.errors import UserError
from tunelab.evaluate import collect_logits, evaluate_split
from tunelab.forgetting.drift import linear_cka
from tunelab.forgetting.heads import HeadTap, frozen_copy, head_module, head_name, own_head
from tunelab.forgetting.regularizers import WeightPull, anchor_weights, diagonal_fisher
from tunelab.forgetting.replay import Replay
from tunelab.forgetting.terms import LearningWithoutForgetting, OldHeadReplay, Pull
from tunelab.tasks import get_task

DRIFT_ROWS = 512  # validation rows whose features are compared before and after


@dataclass
class ForgettingRun:
    tap: HeadTap
    old_labels: object | None  # the targets of the base model's own head, which scores retain sets
    task: object  # the run's task, which scores them (accuracy of classes, entity F1 of tags)
    retain: dict = field(default_factory=dict)  # name -> loader of the split scored
    probe: object | None = None
    base_features: torch.Tensor | None = None
    base_retain: dict = field(default_factory=dict)
    terms: list = field(default_factory=list)  # what the loss adds to the task's (tunelab.loss)


def setup_forgetting(config, loaded, model, accelerator, collate, datasets: dict, remembered=None):
    """Everything measured before training; None when the config asks for nothing. Torch's random
    state is left as it was, so measuring forgetting never changes the run it measures. With
    ``remembered`` (a ``Remembered``) the drift probe's base features come from its cache."""
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        return _setup(config, loaded, model, accelerator, collate, datasets, remembered)


def _setup(config, loaded, model, accelerator, collate, datasets: dict, remembered):
    settings = config.forgetting
    methods = settings.methods
    if not config.retain and not methods and not settings.drift:
        return None
    unwrapped = accelerator.unwrap_model(model)
    old_model = old_labels = None
    if config.retain or {"ewc", "lwf", "replay"} & set(methods):
        found = own_head(config)
        if found is None:
            wanted = "retain sets" if config.retain else f"forgetting.{methods[0]}"
            raise UserError(
                f"{wanted}: model.source {config.model.source} has no trained {run_head(config)} head of its own "
                "to score the old task with; forgetting.drift (feature drift) needs no head"
            )
        old_model, old_labels = found
    old_head = frozen_copy(head_module(old_model)) if old_model is not None else None
    run = ForgettingRun(HeadTap(unwrapped, old_head).to(accelerator.device), old_labels, get_task(config))
    retain_train = {}
    for entry in config.retain:
        scored, trained = _retain_splits(config, entry, loaded, old_labels)
        run.retain[entry.name] = accelerator.prepare(eval_loader(scored, config.train.eval_batch_size, collate))
        if trained is not None:
            retain_train[entry.name] = trained
    run.base_retain = score_retained(model, run, accelerator)
    if settings.drift and "validation" in datasets:
        rows = range(min(DRIFT_ROWS, len(datasets["validation"])))
        probe = eval_loader(Subset(datasets["validation"], list(rows)), config.train.eval_batch_size, collate)
        run.probe = accelerator.prepare(probe)
        measure = lambda: features(model, run, accelerator)  # noqa: E731
        run.base_features = remembered.tensor("drift", {"probe": run.probe}, measure) if remembered else measure()
    run.terms = _terms(config, unwrapped, run, old_model, retain_train, collate, accelerator)
    return run


def run_head(config) -> str:
    return "token-classification" if config.task == "token-classification" else "classification"


def _retain_splits(config, entry, loaded, old_labels):
    """The retain set's scored split (test, else validation) and its train split, as datasets."""
    update = {"data": entry.data, "seed": config.seed if entry.seed is None else entry.seed}
    retain_config = config.model_copy(update=update)
    try:
        raw = read_data(retain_config)
        prepared = prepare_data(RawData(raw.splits, old_labels, raw.channels), loaded, retain_config)
    except UserError as error:
        raise UserError(f"retain '{entry.name}': {error}") from None
    scored = prepared.datasets.get("test") or prepared.datasets["validation"]
    return scored, prepared.datasets.get("train")


def score_retained(model, run: ForgettingRun, accelerator) -> dict:
    """Metrics of each retain set through the base model's own head on the current weights."""
    scores = {}
    with run.tap:
        for name, loader in run.retain.items():
            scores[name] = evaluate_split(
                model, loader, accelerator, run.task.scorer(run.old_labels), read_logits=lambda _: run.tap.old_logits
            )
    return scores


def features(model, run: ForgettingRun, accelerator) -> torch.Tensor:
    """The head's input on the probe rows, gathered from every process."""
    with run.tap:
        collected, _ = collect_logits(model, run.probe, accelerator, read_logits=lambda _: run.tap.features.flatten(1))
    return collected


def forgetting_results(model, run: ForgettingRun, accelerator) -> dict:
    """After training: each retain set before and after, and the drift of the features."""
    results = {}
    if run.retain:
        after = score_retained(model, run, accelerator)
        metric = run.task.default_metric
        results["retain"] = {
            name: {
                "metric": metric,
                "base": run.base_retain[name],
                "final": after[name],
                "forgetting": run.base_retain[name][metric] - after[name][metric],
            }
            for name in run.retain
        }
    if run.base_features is not None:
        results["drift"] = {"validation_cka": linear_cka(run.base_features, features(model, run, accelerator))}
    return results


def _terms(config, unwrapped, run, old_model, retain_train, collate, accelerator) -> list:
    """The loss terms the config's forgetting methods ask for: replay, LwF, L2-SP, EWC."""
    settings = config.forgetting
    head = head_name(unwrapped) + "."
    terms = []
    if settings.replay:
        if not retain_train:
            raise UserError("forgetting.replay: no retain set has a train split to replay rows from")
        per_process = max(1, config.train.batch_size // accelerator.num_processes)
        replay = Replay(
            ConcatDataset(list(retain_train.values())), collate, settings.replay.fraction, per_process,
            config.seed, accelerator.process_index,
        )  # fmt: skip
        terms.append(OldHeadReplay(replay, run.tap, settings.replay.weight))
    if settings.lwf:
        teacher = frozen_copy(old_model).to(accelerator.device)
        terms.append(LearningWithoutForgetting(teacher, run.tap, settings.lwf.strength, settings.lwf.temperature))
    if settings.l2sp:
        anchor = anchor_weights(unwrapped, head)
        terms.append(Pull("l2sp", WeightPull(anchor, settings.l2sp.strength), unwrapped))
    if settings.ewc:
        if not retain_train:
            raise UserError("forgetting.ewc: no retain set has a train split to estimate the Fisher information on")
        anchor = anchor_weights(unwrapped, head)
        rows = ConcatDataset(list(retain_train.values()))
        loader = eval_loader(rows, config.train.eval_batch_size, collate, longest_first=False)  # the first rows
        with _all_trainable(unwrapped):
            fisher = diagonal_fisher(
                unwrapped, run.tap.old_logits_of, OnDevice(loader, accelerator.device), list(anchor),
                settings.ewc.fisher_examples, config.seed,
            )  # fmt: skip
        terms.append(Pull("ewc", WeightPull(anchor, settings.ewc.strength, fisher), unwrapped))
    return terms


class _all_trainable:
    """Gradients for every parameter while the Fisher is estimated, frozen ones included."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        self.model.requires_grad_(True)

    def __exit__(self, *exc):
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.flags[name])
