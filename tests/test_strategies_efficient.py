"""Every strategy trains exactly the parameters it claims, and no others.

Each case applies a strategy, builds the optimizer from its parameter groups (its claim), takes
three optimizer steps at a large rate and checks that the claimed set, and nothing else, moved.
The claim itself is checked against the method's definition (biases for BitFit, lora_A/lora_B on
query and value for LoRA, ...).
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch.utils.data import DataLoader

from tunelab.config import validate
from tunelab.data import prepare_data, read_data
from tunelab.engine.optim import build_optimizer
from tunelab.errors import UserError
from tunelab.models import load_model
from tunelab.strategies import build_strategy
from tunelab.tasks import get_task

# Attention key biases get an exactly-zero gradient (softmax ignores a shift shared by every key).
ZERO_GRADIENT = ("attention.self.key.bias",)


def setup(config: dict, strategy: dict):
    config = validate(config | {"strategy": strategy, "optim": {"lr": 0.05, "weight_decay": 0.01}})
    torch.manual_seed(0)
    raw = read_data(config)
    loaded = load_model(config, raw.labels, raw.channels)
    data = prepare_data(raw, loaded, config)
    built = build_strategy(config.strategy, loaded.fresh_head)
    model = built.apply(loaded.model)
    optimizer = build_optimizer(built.parameter_groups(model, config.optim), config.optim)
    loader = DataLoader(data.datasets["train"], batch_size=8, collate_fn=get_task(config).collate(loaded, config))
    return model, built, optimizer, loader


def claimed_and_changed(config: dict, strategy: dict, steps: int = 3) -> tuple[set[str], set[str], torch.nn.Module]:
    model, built, optimizer, loader = setup(config, strategy)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    claimed = {name for name, p in model.named_parameters() if id(p) in in_optimizer}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    built.train_mode(model)
    for batch in itertools.islice(itertools.cycle(loader), steps):
        get_task(config.get("task", "text-classification")).loss_function()(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    return claimed, changed, model


def assert_exactly(claimed: set[str], changed: set[str]) -> None:
    assert changed <= claimed, f"not claimed but changed: {sorted(changed - claimed)[:5]}"
    idle = {name for name in claimed - changed if not name.endswith(ZERO_GRADIENT)}
    assert not idle, f"claimed but unchanged: {sorted(idle)[:5]}"


BERT_CASES = {
    "bitfit": (
        {"name": "bitfit"},
        lambda n: n.endswith(".bias") or n.startswith("classifier."),
    ),
    "lora": (
        {"name": "lora", "lora": {"r": 2}},
        lambda n: (".lora_" in n and (".query." in n or ".value." in n)) or "classifier.modules_to_save" in n,
    ),
    "lora-dora": (
        {"name": "lora", "lora": {"r": 2, "use_dora": True, "target_modules": ["query", "key", "value", "dense"]}},
        lambda n: ".lora_" in n or "classifier.modules_to_save" in n,
    ),
    "ia3": ({"name": "ia3"}, lambda n: ".ia3_l." in n or "classifier.modules_to_save" in n),
    "prefix": (
        {"name": "prefix", "prefix": {"num_virtual_tokens": 4}},
        lambda n: n.startswith("prompt_encoder.") or "classifier.modules_to_save" in n,
    ),
    "prompt": (
        {"name": "prompt", "prompt": {"num_virtual_tokens": 4}},
        lambda n: n.startswith("prompt_encoder.") or "classifier.modules_to_save" in n,
    ),
    "adapter-pfeiffer": (
        {"name": "adapter", "adapter": {"reduction_factor": 8}},
        lambda n: (
            ".output.dense.adapter." in n and ".attention." not in n or "LayerNorm" in n or n.startswith("classifier.")
        ),
    ),
    "adapter-houlsby": (
        {"name": "adapter", "adapter": {"placement": "houlsby", "reduction_factor": 8}},
        lambda n: ".output.dense.adapter." in n or "LayerNorm" in n or n.startswith("classifier."),
    ),
    "full": ({"name": "full"}, lambda n: True),
    "discriminative": ({"name": "discriminative"}, lambda n: True),
}


@pytest.mark.parametrize("case", BERT_CASES, ids=list(BERT_CASES))
def test_each_strategy_changes_exactly_what_it_claims_on_bert(case, text_config):
    strategy, expected = BERT_CASES[case]
    claimed, changed, model = claimed_and_changed(text_config, strategy)
    names = {name for name, _ in model.named_parameters()}
    assert claimed == {name for name in names if expected(name)}, "the claim is not the method's definition"
    assert_exactly(claimed, changed)
    if case.startswith("adapter"):
        adapters = {name.split(".adapter.")[0] for name in names if ".adapter." in name}
        assert len(adapters) == (4 if case.endswith("houlsby") else 2)
    if case not in ("full", "discriminative"):
        assert len(claimed) < len(names)


CNN_CASES = {
    # The CNN's convolutions have no bias: its biases are batch norm's shifts and the head's.
    "bitfit": ({"name": "bitfit"}, lambda n: n.endswith(".bias") or n.startswith("head.")),
    "lora": ({"name": "lora", "lora": {"r": 2}}, lambda n: ".lora_" in n or "head.modules_to_save" in n),
    "ia3": ({"name": "ia3"}, lambda n: ".ia3_l." in n or "head.modules_to_save" in n),
    "adapter": (
        {"name": "adapter"},
        # Adapters, the head and the batch norms (the second layer of each block), as residual adapters train.
        lambda n: ".adapter." in n or n.startswith("head.") or re.fullmatch(r"blocks\.\d\.1\.(weight|bias)", n),
    ),
}


@pytest.fixture
def cnn_config():
    return {
        "task": "image-classification",
        "seed": 0,
        "model": {"source": "cnn"},
        "data": {"train": "digits", "digits_classes": [0, 1, 2], "digits_train_per_class": 8},
    }


@pytest.mark.parametrize("case", CNN_CASES, ids=list(CNN_CASES))
def test_each_strategy_changes_exactly_what_it_claims_on_the_cnn(case, cnn_config):
    strategy, expected = CNN_CASES[case]
    claimed, changed, model = claimed_and_changed(cnn_config, strategy)
    names = {name for name, _ in model.named_parameters()}
    assert claimed == {name for name in names if expected(name)}
    assert_exactly(claimed, changed)
    assert len(claimed) < len(names)


def test_adapters_start_as_the_identity(text_config):
    """``up`` starts at zero, so before training the adapted model computes what the base does."""
    config = validate(text_config)
    raw = read_data(config)
    base = load_model(config, raw.labels).model.eval()
    adapted = build_strategy(validate(text_config | {"strategy": {"name": "adapter"}}).strategy).apply(
        load_model(config, raw.labels).model
    )
    adapted.load_state_dict(base.state_dict(), strict=False)
    adapted.eval()
    inputs = {"input_ids": torch.tensor([[101, 2204, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, base(**inputs).logits)


def test_discriminative_rates_shrink_from_the_head_down(text_config):
    model, _, optimizer, _ = setup(text_config, {"name": "discriminative", "layer_lr_decay": 0.5})
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    rates = {name: rate_of[id(p)] for name, p in model.named_parameters()}
    assert rates["classifier.weight"] == rates["bert.pooler.dense.weight"] == pytest.approx(0.05)
    assert rates["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(0.025)
    assert rates["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(0.0125)
    assert rates["bert.embeddings.word_embeddings.weight"] == pytest.approx(0.00625)
    assert optimizer.param_groups[0]["lr"] == max(rates.values())  # logged rate is the highest group's
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(dict(model.named_parameters())["bert.encoder.layer.0.output.dense.bias"]) in no_decay


def test_head_lr_and_lr_groups_combine_with_partial(text_config):
    strategy = {
        "name": "partial",
        "train_last_n_blocks": 1,
        "head_lr": 0.3,
        "lr_groups": {"bert.encoder.layer.1.attention*": 0.001, "bert.encoder.layer.1*": 0.002},
    }
    model, _, optimizer, _ = setup(text_config, strategy)
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    rates = {name: rate_of.get(id(p)) for name, p in model.named_parameters()}
    assert rates["classifier.weight"] == 0.3
    assert rates["bert.encoder.layer.1.attention.self.query.weight"] == 0.001  # first matching pattern wins
    assert rates["bert.encoder.layer.1.output.dense.weight"] == 0.002
    assert rates["bert.pooler.dense.weight"] == 0.05
    assert rates["bert.encoder.layer.0.output.dense.weight"] is None  # frozen by partial: not optimised


def test_an_lr_group_that_matches_nothing_is_named(text_config):
    with pytest.raises(UserError, match="strategy.lr_groups: pattern 'encoder.nope' matches no parameter"):
        setup(text_config, {"name": "full", "lr_groups": {"encoder.nope": 0.1}})


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_virtual_tokens_need_a_text_transformer(name, cnn_config):
    with pytest.raises(UserError, match=f"strategy {name}: needs a Hugging Face text transformer"):
        setup(cnn_config, {"name": name})


def test_an_unknown_strategy_lists_the_known_ones(text_config):
    known = "choose from full, partial, progressive, .*ia3"
    with pytest.raises(UserError, match=f"strategy.name: 'magic' is not a strategy; {known}"):
        validate(text_config | {"strategy": {"name": "magic"}})


def test_the_base_model_is_scored_without_the_adapter_whatever_the_strategy(text_config, tmp_path):
    """Virtual tokens start random: scoring the "base" through them would not score the base model."""
    from tunelab.builder import run_training
    from tunelab.rundir import prepare_run_dir

    config = text_config | {"train": text_config["train"] | {"max_steps": 1}}
    base = {}
    for name in ("full", "lora", "prompt", "adapter"):
        run_dir = prepare_run_dir(tmp_path / name, False)
        base[name] = run_training(validate(config | {"strategy": {"name": name}}), run_dir, progress=False)["base"]
    for name in ("lora", "prompt", "adapter"):
        for split in ("validation", "test"):
            assert base[name][split]["loss"] == pytest.approx(base["full"][split]["loss"], abs=1e-6), (name, split)


def test_lora_targets_are_detected_for_common_architectures():
    from transformers import GPT2Config, GPT2ForSequenceClassification, ViTConfig, ViTForImageClassification

    from tunelab.models.cnn import DemoCNN
    from tunelab.strategies.anatomy import anatomy
    from tunelab.strategies.peft_methods import lora_targets

    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, num_labels=2))
    vit = ViTForImageClassification(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=8,
            patch_size=4,
            num_labels=2,
        )
    )
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    assert lora_targets(gpt2, anatomy(gpt2).head) == ["c_attn"]
    assert lora_targets(vit, anatomy(vit).head) == ["q_proj", "v_proj"]  # transformers 5 names
    assert lora_targets(plain, anatomy(plain).head) == ["0", "2"]  # every linear layer but the head
    cnn = DemoCNN(num_labels=3)
    assert lora_targets(cnn, anatomy(cnn).head) == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
