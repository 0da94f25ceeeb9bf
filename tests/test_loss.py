"""One loss: the task's own on the batch, plus terms (EWC/L2-SP, LwF, replay, distillation)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelab.compress.distill import distillation_terms
from tunelab.forgetting.heads import HeadTap
from tunelab.forgetting.regularizers import WeightPull, distillation_loss
from tunelab.forgetting.replay import Replay
from tunelab.forgetting.terms import LearningWithoutForgetting, OldHeadReplay, Pull
from tunelab.loss import TrainingLoss
from tunelab.tasks.classification import Classification


class TwoLayers(nn.Module):
    def __init__(self, width: int = 6):
        super().__init__()
        self.body = nn.Linear(4, width)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _moved(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model.body.weight.add_(0.3)
    return model


@pytest.fixture
def setting():
    torch.manual_seed(0)
    base = TwoLayers().eval()
    model = copy.deepcopy(base)
    old_head = copy.deepcopy(base.head).requires_grad_(False)
    model.head = nn.Linear(6, 3)  # the new task's head
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 3, (8,))}
    return base, _moved(model), old_head, batch


def test_the_loss_is_the_task_loss_plus_each_weighted_term(setting):
    base, model, old_head, batch = setting
    anchor = {name: p.detach().clone() for name, p in base.named_parameters() if name.startswith("body")}
    tap = HeadTap(model, old_head)
    terms = [
        LearningWithoutForgetting(copy.deepcopy(base), tap, strength=0.7, temperature=2.0),
        Pull("l2sp", WeightPull(anchor, strength=0.5), model),
    ]
    weights = torch.tensor([1.0, 2.0, 0.5])
    loss = TrainingLoss(Classification(), terms, weights, task_weight=0.4)(model, batch)

    task = F.cross_entropy(model(batch["x"]), batch["labels"], weight=weights)
    with torch.no_grad():
        old = old_head(torch.tanh(model.body(batch["x"])))
    lwf = distillation_loss(old, base(batch["x"]), 2.0)
    l2sp = 0.5 * 0.5 * ((model.body.weight - anchor["body.weight"]) ** 2).sum()
    l2sp = l2sp + 0.5 * 0.5 * ((model.body.bias - anchor["body.bias"]) ** 2).sum()
    assert loss.item() == pytest.approx((0.4 * task + 0.7 * lwf + l2sp).item(), rel=1e-5)
    assert lwf.item() > 1e-4 and l2sp.item() > 1e-4  # each term counts


def test_replayed_rows_feed_their_term_and_stay_out_of_the_task_loss(setting):
    base, model, old_head, batch = setting
    retain = [{"x": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(10)]
    collate = lambda rows: {key: torch.stack([row[key] for row in rows]) for key in rows[0]}  # noqa: E731
    replay = Replay(retain, collate, fraction=0.5, batch_size=8, seed=3)
    loss_fn = TrainingLoss(Classification(), [OldHeadReplay(replay, HeadTap(model, old_head), weight=2.0)])
    loss = loss_fn(model, batch)

    drawn = Replay(retain, collate, fraction=0.5, batch_size=8, seed=3).draw("cpu")
    task = F.cross_entropy(model(batch["x"]), batch["labels"])
    with torch.no_grad():
        old = old_head(torch.tanh(model.body(drawn["x"])))
    replayed = F.cross_entropy(old, drawn["labels"])
    assert loss_fn.last["task"].item() == pytest.approx(task.item(), rel=1e-6)
    assert loss_fn.last["replay"].item() == pytest.approx(replayed.item(), rel=1e-6)
    assert loss.item() == pytest.approx((task + 2.0 * replayed).item(), rel=1e-6)


def test_the_state_of_the_terms_round_trips(setting):
    _, model, old_head, batch = setting
    retain = [{"x": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(10)]
    collate = lambda rows: {key: torch.stack([row[key] for row in rows]) for key in rows[0]}  # noqa: E731

    def loss_fn():
        replay = Replay(retain, collate, fraction=0.5, batch_size=8, seed=3)
        return TrainingLoss(Classification(), [OldHeadReplay(replay, HeadTap(model, old_head))])

    first = loss_fn()
    for _ in range(3):
        first(model, batch)
    assert first.state_dict() == {"replay": {"draws": 3}}
    resumed = loss_fn()
    resumed.load_state_dict(first.state_dict())
    assert resumed(model, batch).item() == first(model, batch).item()  # the fourth draw on both


def test_distillation_and_lwf_add_up_in_one_loss(setting):
    base, model, old_head, batch = setting
    teacher = copy.deepcopy(model)
    _moved(model)
    student_tap, teacher_tap = HeadTap(model), HeadTap(teacher)
    settings = type("Settings", (), {"alpha": 0.6, "temperature": 2.0, "hidden": 0.5})()
    terms = distillation_terms(teacher, settings, student_tap, teacher_tap)
    terms.append(LearningWithoutForgetting(copy.deepcopy(base), HeadTap(model, old_head), 1.0, 2.0))
    loss_fn = TrainingLoss(Classification(), terms, task_weight=1 - settings.alpha)
    loss = loss_fn(model, batch)
    assert set(loss_fn.last) == {"task", "distill", "distill_features", "lwf"}
    parts = loss_fn.last
    expected = 0.4 * parts["task"] + 0.6 * parts["distill"] + 0.5 * parts["distill_features"] + parts["lwf"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with torch.no_grad():
        features = torch.tanh(model.body(batch["x"])), torch.tanh(teacher.body(batch["x"]))
    assert parts["distill_features"].item() == pytest.approx(F.mse_loss(*features).item(), rel=1e-6)


def test_a_feature_term_of_another_width_gives_nothing_rather_than_failing(setting):
    _, model, _, batch = setting
    teacher = TwoLayers(width=5)
    teacher.head = nn.Linear(5, 3)
    settings = type("Settings", (), {"alpha": 0.5, "temperature": 1.0, "hidden": 1.0})()
    terms = distillation_terms(teacher, settings, HeadTap(model), HeadTap(teacher))
    loss_fn = TrainingLoss(Classification(), terms, task_weight=0.5)
    loss_fn(model, batch)
    assert set(loss_fn.last) == {"task", "distill"}
