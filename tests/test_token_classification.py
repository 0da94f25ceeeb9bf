"""Token classification end to end on a tiny BERT: tagged sentences in CoNLL and JSONL, alignment
to sub-tokens, entity scores as conlleval counts them, predict's spans, every strategy, and one
clear line for every kind of bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tunelab.builder import run_training
from tunelab.config import validate
from tunelab.data.conll import converted
from tunelab.data.tokens import TagMap, aligned
from tunelab.evaluate.entities import entity_scores
from tunelab.recipes.predict import run_prediction
from tunelab.rundir import MODEL, RESULTS, prepare_run_dir
from tunelab.tasks import get_task

PEOPLE = ["john smith", "mary", "peter jones", "anna", "li wei"]
PLACES = ["paris", "new york", "berlin", "tokyo"]
GROUPS = ["acme corp", "united nations", "ibm"]
FILLER = ["the", "visited", "met", "in", "today", "and", "said", "from", "with", "a"]


def tagged_sentences(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences whose entities are decided by the words themselves, tagged IOB1 (as CoNLL-2003)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.randint(3, 7)):
            if rng.random() < 0.5:
                words.append(rng.choice(FILLER))
                tags.append("O")
                continue
            kind, pool = rng.choice([("PER", PEOPLE), ("LOC", PLACES), ("ORG", GROUPS)])
            parts = rng.choice(pool).split()
            same = bool(tags) and tags[-1][2:] == kind  # IOB1: B- only where the same type goes on
            words += parts
            tags += [f"{'B' if same and i == 0 else 'I'}-{kind}" for i in range(len(parts))]
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences) -> Path:
    blocks = ["-DOCSTART- -X- O O\n"]
    blocks += ["".join(f"{w} NN O {t}\n" for w, t in zip(words, tags, strict=True)) for words, tags in sentences]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ner")
    return {
        "train": write_conll(folder / "train.txt", tagged_sentences(200, 1)),
        "validation": write_conll(folder / "dev.txt", tagged_sentences(60, 2)),
    }


def ner_config(tiny_bert, ner_files, **changes) -> dict:
    config = {
        "task": "token-classification",
        "seed": 0,
        "model": {"source": str(tiny_bert)},
        "data": {key: str(path) for key, path in ner_files.items()} | {"max_length": 32},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 3, "batch_size": 16, "eval_batch_size": 32, "log_every": 5},
    }
    for key, value in changes.items():
        config[key] = config.get(key, {}) | value if isinstance(value, dict) else value
    return config


def train(config: dict, run_dir: Path) -> dict:
    run_training(validate(config), prepare_run_dir(run_dir, False), progress=False)
    return json.loads((run_dir / RESULTS).read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_bert, ner_files):
    run_dir = tmp_path_factory.mktemp("ner-full") / "run"
    return run_dir, train(ner_config(tiny_bert, ner_files), run_dir)


def test_a_run_learns_entities_and_reports_them_by_type(full_run):
    _, results = full_run
    tuned, base = results["final"]["validation"], results["base"]["validation"]
    assert tuned["f1"] > 0.7 and tuned["f1"] > base["f1"] + 0.5
    assert set(tuned["per_type"]) == {"LOC", "ORG", "PER"}
    assert sum(kind["support"] for kind in tuned["per_type"].values()) == sum(
        sum(row) for row in tuned["entity_confusion"]["matrix"][:-1]
    )  # every true span is counted once: as a type (right or wrong) or as missed


def test_predict_prints_spans_whose_offsets_slice_the_text(full_run):
    run_dir, _ = full_run
    texts = ["john smith visited paris today", "the united nations met in  berlin", "mary said hello"]
    rows = run_prediction(run_dir, None, texts)
    assert [row["input"] for row in rows] == texts
    found = [(e["text"], e["type"]) for row in rows for e in row["entities"]]
    assert ("paris", "LOC") in found and ("berlin", "LOC") in found
    for row in rows:
        for entity in row["entities"]:
            assert row["input"][entity["start"] : entity["end"]] == entity["text"]
            assert 0 < entity["confidence"] <= 1


def test_predict_on_a_conll_file_writes_tags_in_conll(full_run, ner_files, tmp_path):
    from tunelab.cli import main

    run_dir, _ = full_run
    out = tmp_path / "tagged.conll"
    assert main(["predict", str(run_dir), "--input", str(ner_files["validation"]), "--output", str(out)]) == 0
    blocks = [block.splitlines() for block in out.read_text().strip().split("\n\n")]
    assert len(blocks) == 60
    source = [block.splitlines() for block in ner_files["validation"].read_text().split("\n\n")[1:]]
    assert [[line.split()[0] for line in block] for block in blocks] == [
        [line.split()[0] for line in block] for block in source if block
    ]
    assert all(line.split()[1][:2] in ("O", "B-", "I-") for block in blocks for line in block)


class LookupTagger(torch.nn.Module):
    """A 'model' that tags each sub-token by its id from a table: windows can be checked against it."""

    def __init__(self, table: dict[int, int], tags: int):
        super().__init__()
        self.table, self.tags = table, tags

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = torch.full((*input_ids.shape, self.tags), -5.0)
        for (row, column), token in zip(torch.cartesian_prod(*map(torch.arange, input_ids.shape)).tolist(),
                                        input_ids.flatten().tolist(), strict=True):  # fmt: skip
            logits[row, column, self.table.get(token, 0)] = 5.0
        return logits


def test_windows_lose_nothing_and_an_entity_across_a_window_edge_comes_back_whole(tiny_bert):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tunelab.tasks.token_predict import predict_tags

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tags = TagMap(("O", "B-LOC", "I-LOC"))
    new, york = tokenizer.convert_tokens_to_ids(["new", "york"])
    loaded = SimpleNamespace(tokenizer=tokenizer, model=LookupTagger({new: 1, york: 2}, 3), labels=tags)
    text = " ".join(["the"] * 13 + ["new", "york"] + ["a"] * 20 + ["new", "york", "today"])
    whole = predict_tags(validate_data(512), loaded, [text], None)[0]
    windowed = predict_tags(validate_data(16), loaded, [text], None)[0]  # 16 sub-tokens: 14 words a window
    assert windowed["tags"] == whole["tags"] and len(windowed["tokens"]) == 38
    assert [(e["text"], e["start"]) for e in windowed["entities"]] == [
        ("new york", 52),
        ("new york", 101),
    ]  # word 13-14: across the first edge


def validate_data(max_length: int):
    from types import SimpleNamespace

    from tunelab.config import PrepareConfig

    return SimpleNamespace(data=SimpleNamespace(max_length=max_length, prepare=PrepareConfig()))


def conlleval_counts(truth: list[str], guess: list[str]) -> tuple[int, int, int]:
    """(correct, found, true) chunks by conlleval.pl's own rules (startOfChunk/endOfChunk), word
    for word: the reference the scores are checked against."""

    def ends(prev, prev_kind, tag, kind):
        return prev in "BI" and (tag in "BO" or kind != prev_kind)

    def starts(prev, prev_kind, tag, kind):
        return tag == "B" or (tag == "I" and (prev == "O" or kind != prev_kind))

    correct = found = true = 0
    in_correct, last_truth, last_guess = False, ("O", ""), ("O", "")
    for gold, pred in [*zip(truth, guess, strict=True), ("O", "O")]:
        g, p = (gold[0], gold[2:]), (pred[0], pred[2:])
        g_end, p_end = ends(*last_truth, *g), ends(*last_guess, *p)
        g_start, p_start = starts(*last_truth, *g), starts(*last_guess, *p)
        if in_correct and g_end and p_end and last_truth[1] == last_guess[1]:
            correct += 1
            in_correct = False
        elif in_correct and (g_end != p_end or g[1] != p[1]):
            in_correct = False
        if g_start and p_start and g[1] == p[1]:
            in_correct = True
        found += p_start and p[0] != "O"
        true += g_start and g[0] != "O"
        last_truth, last_guess = g, p
    return correct, found, true


CASES = {  # scheme: (true tags as written, predicted IOB2 tags)
    "iob1, adjacent same-type entities": (
        ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "I-ORG", "I-ORG"],
        ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "B-ORG"],
    ),
    "iob2, a wrong type and a wrong boundary": (
        ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O", "B-MISC"],
        ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-ORG"],
    ),
    "bioes, single and long spans": (
        ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "S-LOC", "S-LOC", "O"],
        ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "I-LOC", "O"],
    ),
    "an entity cut at a window edge, predicted as a stray I-": (
        ["B-LOC", "I-LOC", "O", "O", "B-PER", "I-PER", "I-PER", "O"],
        ["B-LOC", "I-LOC", "O", "O", "B-PER", "O", "I-PER", "O"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_entity_scores_equal_the_conlleval_definition(case):
    written, guess = CASES[case]
    (truth,), _ = converted([written], "test")
    scores = entity_scores([truth], [guess])
    correct, found, true = conlleval_counts(truth, guess)
    precision, recall = correct / found, correct / true
    assert scores["precision"] == pytest.approx(precision) and scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(2 * precision * recall / (precision + recall) if correct else 0.0)


def test_entity_scores_by_hand():
    # true: PER(0-1) LOC(3-4) MISC(7); predicted: PER(0-1) LOC(3-4)... wrong: LOC(3-4) is cut short
    truth = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-MISC"]]
    guess = [["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O", "B-ORG"]]
    scores = entity_scores(truth, guess)
    assert (scores["precision"], scores["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert scores["token_accuracy"] == pytest.approx(6 / 8)
    confusion = scores["entity_confusion"]
    index = {name: i for i, name in enumerate(confusion["labels"])}
    matrix = confusion["matrix"]
    assert matrix[index["PER"]][index["PER"]] == 1 and matrix[index["MISC"]][index["ORG"]] == 1
    assert matrix[index["LOC"]][index["O"]] == 1 and matrix[index["O"]][index["LOC"]] == 1  # boundary: both


def test_alignment_labels_first_sub_tokens_and_marks_the_rest(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tags = TagMap(("O", "B-LOC", "I-LOC"))
    words = [("visited", "kaohsiung", "today")]
    dataset, cut = aligned(tokenizer, words, [[0, 1, 0]], 64, len(tags))
    pieces = tokenizer.convert_ids_to_tokens(dataset[0]["input_ids"])
    labels = dataset[0]["labels"]
    assert pieces[0] == "[CLS]" and labels[0] == -100 and labels[-1] == -100 and cut == 0
    first = pieces.index("ka")
    later = [i for i, piece in enumerate(pieces) if piece.startswith("##")]
    assert labels[first] == 1 and later and all(labels[i] == 2 + len(tags) for i in later)  # B- becomes I-, moved
    short, cut = aligned(tokenizer, [tuple(["word"] * 20)], [[0] * 20], 8, len(tags))
    assert cut == 14 and len(short[0]["input_ids"]) == 8

    task = get_task("token-classification")
    logits = torch.zeros(1, len(labels), 3, requires_grad=True)
    first_only = task.loss(logits, torch.tensor([labels]))
    every = task.configured(validate_data_config(label_all_subtokens=True)).loss(logits, torch.tensor([labels]))
    assert first_only.item() == pytest.approx(every.item())  # uniform logits: the mean is the same...
    first_only.backward()
    assert logits.grad[0, later].abs().sum() == 0  # ...but only the first sub-token was learned from


def validate_data_config(**data):
    from types import SimpleNamespace

    return SimpleNamespace(data=SimpleNamespace(**data))


def test_jsonl_rows_and_bioes_tags_train_like_conll(tmp_path, tiny_bert):
    def bioes(tags):
        out = []
        for i, tag in enumerate(tags):
            (tag,) = [tag]
            nxt = tags[i + 1] if i + 1 < len(tags) else "O"
            inside = nxt[:2] == "I-" and nxt[2:] == tag[2:]
            out.append(tag if tag == "O" else ("I-" if tag[0] == "I" else "B-") + tag[2:])
            if tag != "O":
                out[-1] = {("B", True): "B", ("B", False): "S", ("I", True): "I", ("I", False): "E"}[
                    (out[-1][0], inside)
                ] + tag[1:]
        return out

    files = {}
    for role, seed, count in (("train", 1, 200), ("validation", 2, 60)):
        (rows,) = [[(w, converted([t], "x")[0][0]) for w, t in tagged_sentences(count, seed)]]
        path = tmp_path / f"{role}.jsonl"
        path.write_text("".join(json.dumps({"tokens": w, "tags": bioes(t)}) + "\n" for w, t in rows))
        files[role] = path
    results = train(ner_config(tiny_bert, files), tmp_path / "run")
    assert results["final"]["validation"]["f1"] > 0.7


STRATEGIES = ["partial", "progressive", "discriminative", "bitfit", "lora", "adapter", "ia3", "prefix"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_a_tagger(strategy, tiny_bert, ner_files, tmp_path):
    settings = {"partial": {"train_last_n_blocks": 1}}.get(strategy, {})
    config = ner_config(tiny_bert, ner_files, strategy={"name": strategy, **settings}, train={"epochs": 1})
    results = train(config, tmp_path / "run")
    assert results["strategy"] == strategy
    assert results["final"]["validation"]["loss"] < results["base"]["validation"]["loss"]


def test_a_lora_adapter_loads_with_plain_peft_as_a_token_classifier_and_tags_the_same(tiny_bert, ner_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run_dir = tmp_path / "lora"
    train(ner_config(tiny_bert, ner_files, strategy={"name": "lora", "lora": {"r": 8}}, optim={"lr": 1e-2}), run_dir)
    folder = run_dir / MODEL
    labels = json.loads((folder / "label_map.json").read_text())["id2label"]
    base = AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=len(labels))
    plain = PeftModel.from_pretrained(base, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["john smith visited paris today", "the united nations met in berlin"]
    rows = run_prediction(run_dir, None, texts)
    for text, row in zip(texts, rows, strict=True):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            ids = plain(**encoded).logits[0].argmax(-1).tolist()
        word_ids = encoded.word_ids(0)
        firsts = [ids[i] for i, w in enumerate(word_ids) if w is not None and w != (word_ids[i - 1] if i else None)]
        assert [labels[str(i)] for i in firsts] == row["tags"]


BAD_FILES = {  # what train holds -> what the one line names
    "fewer columns than the tag column": ("train.txt", "EU NNP I-ORG\nrejects\n", "line 2 has 1 column(s)"),
    "tokens and tags differ in count": (
        "train.jsonl",
        '{"tokens": ["EU", "rejects", "it"], "tags": ["B-ORG", "O"]}\n',
        "data row 1 has 3 tokens and 2 tags",
    ),
    "an unknown tag prefix": ("train.txt", "EU X-ORG\nrejects O\n", "tag 'X-ORG' is not O or B-/I-/E-/S-"),
    "an empty file": ("train.txt", "", "holds no sentences"),
    "a CSV of sentences": ("train.csv", "text,label\nthis film is great,positive\n", "column 'tokens' not in"),
    "a CSV of sentences named .txt": ("train.txt", "text,label\nthis film is great,positive\n", "line 1 has 1"),
    "a sequence impossible in its scheme": ("train.txt", "EU S-ORG\nrejects E-ORG\n", "'E-ORG' cannot follow"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_tagged_data_gets_one_line_and_exit_2(case, tmp_path, tiny_bert, ner_files, write_config, capsys):
    from test_bad_inputs import assert_user_error

    name, text, message = BAD_FILES[case]
    bad = tmp_path / name
    bad.write_text(text, encoding="utf-8")
    config = ner_config(tiny_bert, ner_files) | {"output_dir": str(tmp_path / "run")}
    config["data"] = config["data"] | {"train": str(bad)}
    assert_user_error(capsys, ["train", write_config(config)], "data.train", message)
    assert not (tmp_path / "run").exists()


def test_a_tag_train_never_saw_gets_one_line(tmp_path, tiny_bert, ner_files, write_config, capsys):
    from test_bad_inputs import assert_user_error

    test = write_conll(tmp_path / "test.txt", [(["acme", "launched", "widgetron"], ["I-ORG", "O", "I-PRODUCT"])])
    config = ner_config(tiny_bert, ner_files) | {"output_dir": str(tmp_path / "run")}
    config["data"] = config["data"] | {"test": str(test)}
    assert_user_error(capsys, ["train", write_config(config)], "data.test", "tag 'B-PRODUCT' (sentence 1)", "PER")


def test_a_tagger_resumed_mid_epoch_ends_with_the_same_weights(tiny_bert, ner_files, tmp_path, capsys):
    import shutil

    from tunelab.cli import main
    from tunelab.rundir import CHECKPOINTS

    config = ner_config(tiny_bert, ner_files, train={"epochs": 2, "checkpoint_every": 4, "keep_checkpoints": 20})
    finished = tmp_path / "finished"
    run_training(validate(config), prepare_run_dir(finished, False), progress=False)
    interrupted = shutil.copytree(finished, tmp_path / "interrupted")
    for name in (RESULTS, "report.html"):
        (interrupted / name).unlink()
    shutil.rmtree(interrupted / MODEL)
    for folder in (interrupted / CHECKPOINTS).glob("step-*"):
        if folder.name > "step-000016":  # 13 steps an epoch: three into the second
            shutil.rmtree(folder)
    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted), "-q"]) == 0
    assert "resuming from step-000016" in capsys.readouterr().err
    weights = "model/model.safetensors"
    assert (interrupted / weights).read_bytes() == (finished / weights).read_bytes()


def test_max_train_examples_draws_whole_sentences(tiny_bert, ner_files, tmp_path):
    config = ner_config(tiny_bert, ner_files, data={"max_train_examples": 50, "max_eval_examples": 20})
    config["train"] |= {"epochs": 1}
    results = train(config, tmp_path / "run")
    assert results["examples"]["train"] == 50 and results["final"]["validation"]["examples"] == 20


def names_only(sentences) -> list:
    """The same kind of sentences as a new task: people tagged NAME, every other type O."""
    return [(words, [f"{t[:2]}NAME" if t.endswith("PER") else "O" for t in tags]) for words, tags in sentences]


def test_a_retain_set_is_scored_by_the_base_taggers_own_head_before_and_after(
    full_run, ner_files, tmp_path, write_config, capsys
):
    from tunelab.cli import main

    base_run, first = full_run
    new = {role: write_conll(tmp_path / f"{role}.txt", names_only(tagged_sentences(rows, seed)))
           for role, rows, seed in (("train", 120, 7), ("validation", 40, 8))}  # fmt: skip
    config = ner_config(None, new, train={"epochs": 2}) | {"output_dir": str(tmp_path / "run")}
    config["model"] = {"source": str(base_run / MODEL)}
    config["retain"] = [{"name": "three types", "data": {key: str(path) for key, path in ner_files.items()}
                         | {"max_length": 32}}]  # fmt: skip
    capsys.readouterr()
    assert main(["train", str(write_config(config))]) == 0
    assert "task (f1)" in capsys.readouterr().out  # the forgetting table, by the tagger's own metric
    results = json.loads((tmp_path / "run" / RESULTS).read_text())
    kept = results["retain"]["three types"]
    assert kept["metric"] == "f1" and set(kept["final"]["per_type"]) == {"LOC", "ORG", "PER"}
    # before training, the old head on the old body is the first run's tagger, scored the same way
    assert kept["base"]["f1"] == pytest.approx(first["final"]["validation"]["f1"], abs=1e-6)
    assert kept["forgetting"] == pytest.approx(kept["base"]["f1"] - kept["final"]["f1"])
    assert results["final"]["validation"]["f1"] > results["base"]["validation"]["f1"]


def test_a_retain_set_needs_a_token_head_of_the_base_models_own(tiny_bert, ner_files, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from tunelab.errors import UserError
    from tunelab.forgetting.heads import own_head

    sentences = tmp_path / "sentence-classifier"
    small = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, id2label={0: "negative", 1: "positive"})  # fmt: skip
    BertForSequenceClassification(small).save_pretrained(sentences)
    assert own_head(validate(ner_config(sentences, ner_files))) is None  # a sentence head cannot tag words
    config = ner_config(tiny_bert, ner_files, train={"epochs": 1})
    config["retain"] = [{"name": "old", "data": {"train": str(ner_files["validation"])}}]
    with pytest.raises(UserError, match="has no trained token-classification head of its own"):
        run_training(validate(config), prepare_run_dir(tmp_path / "run", False), progress=False)
