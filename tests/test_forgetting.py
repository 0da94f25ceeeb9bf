"""Forgetting: retain sets scored with the base model's own head, feature drift, and the methods
that keep what the base model knew (EWC, L2-SP, LwF, replay)."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from torch import nn

from tunelab.cli import main
from tunelab.config import validate
from tunelab.forgetting.drift import linear_cka
from tunelab.forgetting.heads import HeadTap
from tunelab.forgetting.regularizers import WeightPull, diagonal_fisher, distillation_loss
from tunelab.forgetting.replay import Replay, joined
from tunelab.forgetting.terms import LearningWithoutForgetting
from tunelab.loss import TrainingLoss
from tunelab.tasks.classification import Classification

RETAIN = {
    "name": "digits 0-4",
    "seed": 0,
    "data": {
        "train": "digits",
        "digits_classes": [0, 1, 2, 3, 4],
        "digits_pretext": "dihedral",
        "digits_validation_per_class": 5,
    },
}


def transfer_config(**forgetting) -> dict:
    """digits-cnn (pretrained on digits 0-4) fine-tuned on 5-9 hard enough to forget."""
    return {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": "digits-cnn"},
        "data": {"train": "digits", "digits_classes": [5, 6, 7, 8, 9], "digits_validation_per_class": 10},
        "retain": [RETAIN],
        "forgetting": forgetting,
        "optim": {"lr": 1e-2},
        "schedule": {"name": "one-cycle"},
        "train": {"epochs": 4, "batch_size": 32, "checkpoint_every": None},
        "evaluate": {"max_train_examples": 50},
    }


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


# -- the regularisers on their own ------------------------------------------------------------------


def test_ewc_is_zero_at_the_anchor_and_grows_with_fisher_weighted_distance():
    torch.manual_seed(0)
    model = TwoLayers()
    anchor = {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("body")}
    fisher = {"body.weight": torch.zeros(6, 4), "body.bias": torch.zeros(6)}
    fisher["body.weight"][0, 0], fisher["body.weight"][1, 1] = 10.0, 1.0
    ewc = WeightPull(anchor, strength=2.0, importance=fisher)
    assert ewc(model).item() == 0.0
    with torch.no_grad():
        model.body.weight[1, 1] += 0.5  # low-Fisher weight moved
    low = ewc(model).item()
    assert low == pytest.approx(0.5 * 2.0 * 1.0 * 0.5**2)
    with torch.no_grad():
        model.body.weight[1, 1] -= 0.5
        model.body.weight[0, 0] += 0.5  # the same move on a weight ten times as important
    assert ewc(model).item() == pytest.approx(10 * low)
    with torch.no_grad():
        model.body.weight[2, 2] += 3.0  # zero Fisher: free to move
    assert ewc(model).item() == pytest.approx(10 * low)


def test_l2sp_pulls_toward_the_pretrained_weights_not_toward_zero():
    torch.manual_seed(0)
    model = TwoLayers()
    with torch.no_grad():
        model.body.weight.fill_(2.0)
    anchor = {"body.weight": model.body.weight.detach().clone()}
    l2sp = WeightPull(anchor, strength=1.0)
    assert l2sp(model).item() == 0.0
    with torch.no_grad():
        model.body.weight.fill_(1.0)  # moved toward zero, away from the pretrained 2.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        l2sp(model).backward()
        optimizer.step()
    assert torch.all(model.body.weight > 1.0) and torch.all(model.body.weight < 2.0)  # back up toward 2.0
    assert model.head.weight.grad is None  # the head has no pretrained value: never pulled


def test_distillation_is_zero_for_identical_outputs_and_positive_otherwise():
    logits = torch.randn(5, 4)
    assert distillation_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, logits.flip(0), 2.0).item() > 0


def test_lwf_with_a_copy_of_the_model_as_teacher_starts_at_zero():
    torch.manual_seed(0)
    model = TwoLayers().eval()
    teacher = copy.deepcopy(model).requires_grad_(False)  # the base model with its own head
    old_head = copy.deepcopy(model.head).requires_grad_(False)
    model.head = nn.Linear(6, 2)  # the new task's head
    lwf = validate({"data": {"train": "x"}, "forgetting": {"lwf": {}}}).forgetting.lwf
    lwf_term = LearningWithoutForgetting(teacher, HeadTap(model, old_head), lwf.strength, lwf.temperature)
    loss = TrainingLoss(Classification(), [lwf_term])
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    loss(model, batch)
    assert loss.last["lwf"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.body.weight.add_(0.5)  # the student moves away: distillation pulls it back
    loss(model, batch)
    assert loss.last["lwf"].item() > 1e-4


def test_a_head_tap_hooks_the_head_only_while_it_is_used():
    """Training passes run with no hook on the head (a hook costs every forward pass)."""
    model = TwoLayers()
    tap = HeadTap(model, nn.Linear(6, 3))
    assert not model.head._forward_hooks
    with tap:
        with tap:
            model(torch.randn(2, 4))
        assert tap.features.shape == (2, 6) and tap.old_logits.shape == (2, 3)
        assert len(model.head._forward_hooks) == 1  # nested use keeps it until the outer one ends
    assert not model.head._forward_hooks
    tap.features = None
    model(torch.randn(2, 4))
    assert tap.features is None


def test_the_fisher_is_zero_where_the_old_head_does_not_look():
    torch.manual_seed(0)
    model = TwoLayers()
    old_head = nn.Linear(6, 3)
    with torch.no_grad():
        old_head.weight[:, 0] = 0.0  # the old task ignores the first hidden unit
    tap = HeadTap(model, old_head)
    batches = [{"x": torch.randn(10, 4), "labels": torch.zeros(10, dtype=torch.long)}]
    fisher = diagonal_fisher(model, tap.old_logits_of, batches, ["body.weight", "body.bias"], examples=10, seed=0)
    assert torch.all(fisher["body.weight"][0] == 0) and fisher["body.bias"][0] == 0
    assert torch.all(fisher["body.weight"] >= 0) and fisher["body.weight"][1:].sum() > 0
    again = diagonal_fisher(model, tap.old_logits_of, batches, ["body.weight", "body.bias"], examples=10, seed=0)
    torch.testing.assert_close(fisher, again)  # seeded draws: the same estimate every time


def test_linear_cka_is_one_for_the_same_features_up_to_rotation_and_scale():
    torch.manual_seed(0)
    features = torch.randn(200, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    assert linear_cka(features, features) == pytest.approx(1.0)
    assert linear_cka(features, 3.0 * features @ rotation) == pytest.approx(1.0)
    assert linear_cka(features, torch.randn(200, 16)) < 0.3


def test_replayed_rows_depend_only_on_how_many_draws_came_before():
    dataset = [{"pixel_values": torch.full((1, 2, 2), float(i)), "labels": i} for i in range(50)]

    def collate(rows):
        return {
            "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows]),
        }

    first = Replay(dataset, collate, fraction=0.5, batch_size=8, seed=1)
    drawn = [first.draw("cpu")["labels"].tolist() for _ in range(3)]
    assert all(len(rows) == 4 for rows in drawn) and drawn[0] != drawn[1]
    resumed = Replay(dataset, collate, fraction=0.5, batch_size=8, seed=1)
    resumed.load_state_dict({"draws": 2})
    assert resumed.draw("cpu")["labels"].tolist() == drawn[2]


def test_joined_batches_pad_text_to_the_longer_one():
    short = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1]])}
    long = {"input_ids": torch.tensor([[7, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    together = joined(short, long, pad_token_id=0)
    assert together["input_ids"].tolist() == [[5, 6, 0], [7, 8, 9]]
    assert together["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


# -- in a training run ------------------------------------------------------------------------------


def train(tmp_path, config: dict, name: str, capsys=None) -> dict:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "-o", str(tmp_path / name), "--json"]) == 0
    if capsys is not None:
        capsys.readouterr()
    return json.loads((tmp_path / name / "results.json").read_text())


def test_a_run_reports_what_the_base_model_knew_before_and_after(tmp_path, capsys):
    path = tmp_path / "naive.yaml"
    path.write_text(json.dumps(transfer_config()))
    assert main(["train", str(path), "-o", str(tmp_path / "naive")]) == 0
    out = capsys.readouterr().out
    assert "what the base model knew (kept by: none)" in out and "digits 0-4" in out and "linear CKA" in out
    results = json.loads((tmp_path / "naive" / "results.json").read_text())
    retained = results["retain"]["digits 0-4"]
    # The pretrained head on its own unseen test rows: 0.919-0.922 on the four base models measured
    # below; naive forgetting at this rate: 9.7-44.4 points over them and seeds 0-2, so the bound
    # below sits almost 5x under the lowest run seen.
    assert retained["base"]["accuracy"] > 0.85
    assert retained["base"]["examples"] == retained["final"]["examples"] > 100
    assert retained["forgetting"] == pytest.approx(retained["base"]["accuracy"] - retained["final"]["accuracy"])
    assert retained["forgetting"] > 0.02  # naive fine-tuning at this rate visibly forgets
    assert 0.0 < results["drift"]["validation_cka"] < 1.0
    page = (tmp_path / "naive" / "report.html").read_text()
    assert "<h2>Forgetting</h2>" in page and "Feature drift" in page


def test_measuring_forgetting_leaves_the_run_it_measures_unchanged(tmp_path, capsys):
    plain = transfer_config() | {"retain": [], "forgetting": {"drift": False}}
    train(tmp_path, plain, "plain", capsys)
    train(tmp_path, transfer_config(), "measured", capsys)
    model = "model/model.safetensors"
    assert (tmp_path / "plain" / model).read_bytes() == (tmp_path / "measured" / model).read_bytes()


# Forgetting after fine-tuning a CNN at a high rate is chaotic: another CPU's kernels, or one seed
# more, give a different digits-cnn and a different run. Measured on this transfer with four base
# models (this machine's; pretrained at a 2% and a 4% higher rate; ATEN_CPU_CAPABILITY=default, the
# unvectorised kernels of another CPU), each fine-tuned with seeds 0-2, in points: naive 9.7-44.4
# per run (9.7 is the kind of run that failed a single-seed test elsewhere); EWC at 1000, 0.5-1.4;
# L2-SP at 1.0, 0.3-1.2; LwF 1.6-7.3; replay at 4x the batch, 1.9-8.5. Means over the three seeds:
# naive 28.2-35.9, the highest method's 5.4, at least 5x apart; a mean below half of naive's holds.
FORGETTING_SEEDS = (0, 1, 2)
GUARDS = {"ewc": {"strength": 1000.0}, "l2sp": {"strength": 1.0}, "lwf": {"strength": 1.0}, "replay": {"fraction": 4.0}}


def mean_forgetting(folder, **forgetting) -> tuple[float, list[float]]:
    runs = []
    for seed in FORGETTING_SEEDS:
        config = transfer_config(**forgetting) | {"seed": seed}
        results = train(folder, config, f"{'-'.join(forgetting) or 'naive'}-{seed}")
        runs.append(results["retain"]["digits 0-4"]["forgetting"])
        assert set(results["forgetting_methods"]) >= set(forgetting)
    return sum(runs) / len(runs), runs


@pytest.fixture(scope="module")
def naive_forgetting(tmp_path_factory) -> tuple[float, list[float]]:
    return mean_forgetting(tmp_path_factory.mktemp("naive"))


@pytest.mark.parametrize("method", list(GUARDS))
def test_each_method_forgets_less_than_naive_fine_tuning(tmp_path, method, naive_forgetting):
    naive, naive_runs = naive_forgetting
    guarded, runs = mean_forgetting(tmp_path, **{method: GUARDS[method]})
    assert naive > 0.05, naive_runs  # naive fine-tuning at this rate visibly forgets
    assert guarded < naive / 2, (method, runs, naive_runs)


def test_a_resumed_replay_run_draws_the_same_rows_and_ends_the_same(tmp_path, capsys):
    config = transfer_config(replay={"fraction": 0.5})
    config["train"] |= {"epochs": 2, "checkpoint_every": 3, "keep_checkpoints": 20}
    finished = tmp_path / "finished"
    results = train(tmp_path, config, "finished", capsys)
    interrupted = shutil.copytree(finished, tmp_path / "interrupted")
    for name in ("results.json", "report.html"):
        (interrupted / name).unlink()
    shutil.rmtree(interrupted / "model")
    checkpoints = sorted(p for p in (interrupted / "checkpoints").iterdir() if p.name.startswith("step-"))
    for newer in checkpoints[len(checkpoints) // 2 :]:  # killed halfway: the newer half never happened
        shutil.rmtree(newer)
    assert main(["train", "--resume", str(interrupted), "-q"]) == 0
    model = "model/model.safetensors"
    assert (interrupted / model).read_bytes() == (finished / model).read_bytes()
    resumed = json.loads((interrupted / "results.json").read_text())
    assert resumed["retain"] == results["retain"] and resumed["final"] == results["final"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": {"name": "lora"}, "forgetting": {"ewc": {}}}, "forgetting.ewc pulls the model's own weights"),
        ({"retain": [], "forgetting": {"replay": {}}}, "forgetting.replay needs a retain set"),
        ({"model": {"source": "cnn"}}, "retain sets: model.source cnn has no trained classification head"),
    ],
)
def test_forgetting_mistakes_end_with_one_line(tmp_path, capsys, change, message):
    config = transfer_config() | change
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_compare_runs_strategy_plus_method_with_exactly_the_methods_named(tmp_path):
    from tunelab.recipes.compare import parse_strategies, strategy_config

    config = validate(transfer_config(ewc={"strength": 5.0}) | {"compare": {"forgetting": {"ewc": {"strength": 7.0}}}})
    assert strategy_config(config, "full").forgetting.methods == []
    ewc = strategy_config(config, "full+ewc").forgetting
    assert ewc.methods == ["ewc"] and ewc.ewc.strength == 7.0  # compare's own settings
    both = strategy_config(config, "partial+lwf+replay")
    assert both.strategy.name == "partial" and both.forgetting.methods == ["lwf", "replay"]
    assert both.forgetting.replay.fraction == 1.0  # the default when compare names no settings
    from tunelab.errors import UserError

    with pytest.raises(UserError, match="'forget' .* is not a forgetting method"):
        parse_strategies("full,full+forget", config)


def test_a_text_model_keeps_its_own_head_for_the_old_task(tmp_path, capsys, tiny_bert, sentiment_files):
    """Fine-tune a sentiment model on a new text task; score sentiment through the sentiment head."""
    from conftest import make_text_config

    first = make_text_config(tiny_bert, sentiment_files) | {"seed": 0}
    first["train"] |= {"epochs": 3, "checkpoint_every": None}
    train(tmp_path, first, "sentiment", capsys)
    rows = ["long text here,long", "short,short", "a much longer text than that,long", "tiny,short"] * 8
    (tmp_path / "length.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    second = {
        "seed": 0,
        "model": {"source": str(tmp_path / "sentiment" / "model")},
        "data": {"train": str(tmp_path / "length.csv"), "max_length": 32},
        "retain": [{"name": "sentiment", "data": first["data"]}],
        "forgetting": {"lwf": {}, "replay": {"fraction": 0.5}},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8, "checkpoint_every": None},
    }
    results = train(tmp_path, second, "length", capsys)
    sentiment = json.loads((tmp_path / "sentiment" / "results.json").read_text())
    retained = results["retain"]["sentiment"]
    # Before fine-tuning, the retain score is the sentiment model's own test score, through its own head.
    assert retained["base"]["accuracy"] == pytest.approx(sentiment["final"]["test"]["accuracy"])
    assert retained["final"]["examples"] == sentiment["final"]["test"]["examples"]
