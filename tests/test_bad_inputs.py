"""Hostile inputs: every user mistake gives exit 2 and one ``error:`` line naming the key or file.

Each case runs the command line in-process and also checks that no file that existed before
the command (configs, data, an earlier run) was changed. Nearly all cases fail before any
training starts, so the whole file runs in seconds on the tiny fixtures.
"""

from __future__ import annotations

import itertools
import tempfile
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunelab.cli import main
from tunelab.config import RunConfig

DELETE = object()


def set_key(config: dict, dotted: str, value: object) -> dict:
    """Set (or with ``DELETE`` remove) ``a.b.c`` in a nested dict, creating sections as needed."""
    *sections, last = dotted.split(".")
    node = config
    for section in sections:
        node = node.setdefault(section, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return config


def snapshot(*roots: Path) -> dict[Path, tuple[bytes, int]]:
    """Bytes and modification time of every file under ``roots``."""
    files = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file():
                files[path] = (path.read_bytes(), path.stat().st_mtime_ns)
    return files


def assert_user_error(capsys, argv: list[str], *names: str, untouched: tuple[Path, ...] = ()) -> str:
    """Run the CLI; expect exit 2, one ``error:`` line mentioning every name, files untouched."""
    before = snapshot(*untouched)
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, f"exit {code}; stderr:\n{captured.err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{captured.err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in line
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    after = snapshot(*untouched)
    for path, state in before.items():
        assert after.get(path) == state, f"{path} existed before the command and was changed or removed"
    return line


@pytest.fixture
def train(text_config, write_config, tmp_path, sentiment_files, tiny_bert, capsys):
    """Write a patched copy of the valid config, run ``train`` on it, expect a user error."""

    def run(patch: dict, *names: str, extra: tuple[str, ...] = ()) -> str:
        config = text_config
        for key, value in patch.items():
            set_key(config, key, value)
        path = write_config(config)
        argv = ["train", path, "--output", tmp_path / "run", "--quiet", *extra]
        untouched = (tmp_path, *sentiment_files.values(), tiny_bert)
        line = assert_user_error(capsys, argv, *names, untouched=untouched)
        # A run that never started leaves no run directory that would block its own retry.
        assert not (tmp_path / "run").exists(), "a failed run left a run directory behind"
        return line

    return run


# --- the config schema ---------------------------------------------------------------------

SCHEMA_CASES = {
    "unknown-top-level-key": ({"optimizer": {"lr": 0.1}}, ["unknown key 'optimizer'", "optim"]),
    "unknown-nested-key": ({"optim.lrr": 0.1}, ["unknown key 'optim.lrr'", "allowed here:", "lr"]),
    "key-with-line-break": ({"optim": {"lr\nrate": 1}}, ["unknown key 'optim.lr\\nrate'"]),
    "unknown-deep-key": ({"train.early_stopping": {"patiences": 2}}, ["train.early_stopping.patiences"]),
    "wrong-type-lr": ({"optim.lr": "abc"}, ["optim.lr", "'abc'"]),
    "negative-lr": ({"optim.lr": -0.001}, ["optim.lr", "-0.001"]),
    "infinite-weight-decay": ({"optim.weight_decay": float("inf")}, ["optim.weight_decay"]),
    "zero-batch-size": ({"train.batch_size": 0}, ["train.batch_size"]),
    "fractional-epochs": ({"train.epochs": 1.5}, ["train.epochs"]),
    "invalid-optimizer": ({"optim.name": "adamx"}, ["optim.name", "adamx"]),
    "invalid-schedule": ({"schedule.name": "step"}, ["schedule.name", "'step'"]),
    "planned-task": ({"task": "causal-lm"}, ["causal-lm", "planned", "text-classification"]),
    "unknown-task": ({"task": "regresion"}, ["task", "regresion", "choose from", "regression"]),
    "missing-data-train": ({"data.train": DELETE}, ["data.train"]),
    "section-not-mapping": ({"optim": 5}, ["optim"]),
    "betas-too-short": ({"optim.betas": [0.9]}, ["optim.betas", "too few items"]),
    "betas-too-long": ({"optim.betas": [0.9, 0.99, 0.999]}, ["optim.betas", "at most 2"]),
    "eval-every-zero": ({"train.eval_every": 0}, ["train.eval_every"]),
    "partial-without-rule": ({"strategy.name": "partial"}, ["strategy", "train_last_n_blocks"]),
    "seed-too-large": ({"seed": 2**40}, ["seed"]),
    "negative-seed": ({"seed": -1}, ["seed"]),
    "non-string-key": ({"data": {1: "x", "train": "t.csv"}}, ["data"]),
    "device-check-unfused": (
        {"train.nonfinite_check": "device", "optim.name": "rmsprop"},
        ["train.nonfinite_check", "rmsprop"],
    ),
    "device-check-beside-fp16": (
        {"train.nonfinite_check": "device", "train.mixed_precision": "fp16"},
        ["train.nonfinite_check", "fp16"],
    ),
}


@pytest.mark.parametrize(("patch", "names"), SCHEMA_CASES.values(), ids=SCHEMA_CASES.keys())
def test_bad_config_value(train, patch, names):
    train(patch, *names)


def test_fp16_on_cpu(train):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid on a CUDA machine")
    train({"train.mixed_precision": "fp16"}, "train.mixed_precision", "fp16")


# --- the config file and --set -------------------------------------------------------------

CONFIG_FILES = {
    "missing-file": (None, ["config file not found", "absent.yaml"]),
    "empty-file": (b"", ["absent.yaml", "empty"]),
    "comments-only": (b"# nothing yet\n", ["absent.yaml", "empty"]),
    "invalid-yaml": (b"task: [text\nseed: 1\n", ["absent.yaml", "invalid YAML"]),
    "list-not-mapping": (b"- task\n- seed\n", ["absent.yaml", "mapping"]),
    "scalar-not-mapping": (b"hello\n", ["absent.yaml", "mapping"]),
    "not-utf8": (b"task: caf\xe9\n", ["absent.yaml", "UTF-8"]),
    "python-tag": (b"seed: !!python/object/apply:os.system ['true']\n", ["absent.yaml"]),
}


@pytest.mark.parametrize(("content", "names"), CONFIG_FILES.values(), ids=CONFIG_FILES.keys())
def test_bad_config_file(capsys, tmp_path, content, names):
    path = tmp_path / "absent.yaml"
    if content is not None:
        path.write_bytes(content)
    assert_user_error(capsys, ["train", path, "-o", tmp_path / "run"], *names, untouched=(tmp_path,))
    assert not (tmp_path / "run").exists()


def test_config_path_is_a_folder(capsys, tmp_path):
    (tmp_path / "conf.yaml").mkdir()
    assert_user_error(capsys, ["train", tmp_path / "conf.yaml"], "conf.yaml", untouched=(tmp_path,))


OVERRIDES = {
    "no-equals": ("optim.lr", ["--set", "optim.lr", "dotted.key=value"]),
    "empty-key": ("=3", ["--set", "dotted.key=value"]),
    "not-a-section": ("seed.value=1", ["--set", "'seed' is not a section"]),
    "deep-not-a-section": ("optim.lr.x=1", ["'optim.lr' is not a section"]),
    "unknown-key": ("optim.lrr=1e-4", ["unknown key 'optim.lrr'", "allowed here:"]),
    "wrong-type": ("train.batch_size=many", ["train.batch_size", "'many'"]),
    "empty-value": ("train.epochs=", ["train.epochs"]),
    "list-for-number": ("optim.lr=[1, 2]", ["optim.lr"]),
}


@pytest.mark.parametrize(("override", "names"), OVERRIDES.values(), ids=OVERRIDES.keys())
def test_bad_override(train, override, names):
    train({}, *names, extra=("--set", override))


# --- data files ----------------------------------------------------------------------------

LATIN1 = "text,label\ncaf\xe9 good,pos\nbad one,neg\n".encode("latin-1")
DATA_FILES = {
    "missing-file": ("train", "gone.csv", None, {}, ["data.train", "file not found", "gone.csv"]),
    "empty-file": ("train", "empty.csv", b"", {}, ["data.train", "empty.csv", "empty"]),
    "header-only": ("train", "header.csv", b"text,label\n", {}, ["data.train", "header.csv", "no data rows"]),
    "no-text-column": (
        "train",
        "sentences.csv",
        b"sentence,label\nnice,pos\nbad,neg\n",
        {},
        ["data.train", "'text'", "sentences.csv", "sentence, label"],
    ),
    "configured-column-absent": (
        "validation",
        "val.csv",
        b"text,label\nnice,pos\nbad,neg\n",
        {"data.text_column": "review"},
        ["data.train", "'review'"],
    ),
    "unseen-test-label": (
        "test",
        "test.csv",
        b"text,label\nnice,pos\nso-so,neutral\n",
        {},
        ["data.test", "'neutral'", "row 2"],
    ),
    "not-utf8": ("train", "latin.csv", LATIN1, {}, ["data.train", "latin.csv", "UTF-8"]),
    "unsupported-extension": ("train", "train.xlsx", b"PK\x03\x04", {}, ["data.train", "train.xlsx", ".csv"]),
    "folder-not-file": ("train", "folder.csv", "dir", {}, ["data.train", "folder.csv", "folder"]),
    "one-class": ("train", "one.csv", b"text,label\na,pos\nb,pos\nc,pos\n", {}, ["data.train", "two classes"]),
    "blank-label": ("train", "blank.csv", b"text,label\na,pos\nb,\nc,neg\n", {}, ["data.train", "blank.csv", "label"]),
    "blank-text": ("validation", "blank.csv", b"text,label\n,pos\nb,neg\n", {}, ["data.validation", "'text'"]),
    "broken-jsonl": (
        "train",
        "train.jsonl",
        b'{"text": "a", "label": "pos"}\n{"text": \n',
        {},
        ["data.train", "train.jsonl", "line 2 is not valid JSON"],
    ),
    "jsonl-of-lists": ("train", "lists.jsonl", b"[1, 2]\n[3, 4]\n", {}, ["data.train", "lists.jsonl"]),
    "ragged-csv": ("train", "ragged.csv", b"text,label\na,pos\nb,neg,extra,more\n", {}, ["data.train", "ragged.csv"]),
    "broken-parquet": (
        "train",
        "train.parquet",
        b"not parquet at all",
        {},
        ["data.train", "train.parquet", "cannot parse"],
    ),
    "line-break-in-file-name": ("train", "two\nlines.csv", None, {}, ["data.train", "two\\nlines.csv"]),
    "missing-pair-column": (
        "train",
        "pairs.csv",
        b"text,label\na,pos\nb,neg\n",
        {"data.text_pair_column": "hyp"},
        ["data.train", "'hyp'"],
    ),
}


@pytest.mark.parametrize(("role", "name", "content", "patch", "names"), DATA_FILES.values(), ids=DATA_FILES.keys())
def test_bad_data_file(train, tmp_path, role, name, content, patch, names):
    path = tmp_path / "data" / name
    path.parent.mkdir()
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    train({f"data.{role}": str(path), **patch}, *names)


# --- models and strategies -----------------------------------------------------------------


def test_model_folder_missing(train, tmp_path):
    train({"model.source": str(tmp_path / "no-such-model")}, "model.source", "no-such-model")


def test_model_folder_without_config_json(train, tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    train({"model.source": str(folder)}, "model.source", "empty-model", "config.json")


def test_model_folder_with_broken_config_json(train, tmp_path):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    train({"model.source": str(folder)}, "model.source", "broken-model")


MODULE_SOURCES = {
    "module-does-not-import": ("no_such_package_xyz.models:build", ["model.source", "no_such_package_xyz"]),
    "function-missing": ("tunelab.models.cnn:no_such_builder", ["model.source", "no_such_builder"]),
    "returns-not-a-module": ("os:getcwd", ["model.source", "os:getcwd", "nn.Module"]),
    "empty-module-name": (":build", ["model.source", "cannot import"]),
    "relative-module-name": (".models:build", ["model.source", "'.models'"]),
    "not-callable": ("os:sep", ["model.source", "os:sep"]),
    "needs-other-arguments": ("math:sqrt", ["model.source", "math:sqrt", "missing a required argument"]),
    "module-without-tokenizer": ("cnn", ["model.source", "tokenizer"]),
}


@pytest.mark.parametrize(("source", "names"), MODULE_SOURCES.values(), ids=MODULE_SOURCES.keys())
def test_bad_model_source(train, source, names):
    train({"model.source": source}, *names)


def test_freeze_pattern_matching_nothing(train):
    patch = {"strategy.name": "partial", "strategy.freeze": ["encoder.layers.*"]}
    train(patch, "strategy.freeze", "encoder.layers.*")


def test_more_blocks_than_the_model_has(train):
    patch = {"strategy.name": "partial", "strategy.train_last_n_blocks": 5}
    train(patch, "strategy.train_last_n_blocks", "5", "2 blocks")


def test_everything_frozen(train):
    train({"strategy.name": "partial", "strategy.freeze": ["*"]}, "strategy", "frozen")


# --- the run directory ---------------------------------------------------------------------


def test_existing_run_dir_is_not_clobbered(capsys, text_config, write_config, tmp_path):
    run_dir = tmp_path / "earlier"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n", encoding="utf-8")
    (run_dir / "model" / "model.safetensors").write_bytes(b"weights")
    argv = ["train", write_config(text_config), "--output", run_dir]
    assert_user_error(capsys, argv, "earlier", "--overwrite", untouched=(run_dir,))
    assert sorted(p.name for p in run_dir.rglob("*")) == ["config.yaml", "model", "model.safetensors"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(capsys, text_config, write_config, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious", encoding="utf-8")
    argv = ["train", write_config(text_config), "--output", folder, "--overwrite"]
    assert_user_error(capsys, argv, "thesis", "not a tunelab run", untouched=(folder,))


def test_output_under_a_file(capsys, text_config, write_config, tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("keep me", encoding="utf-8")
    argv = ["train", write_config(text_config), "--output", blocker / "run"]
    assert_user_error(capsys, argv, "output", "somefile", untouched=(tmp_path,))


def test_output_is_a_file(capsys, text_config, write_config, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me", encoding="utf-8")
    argv = ["train", write_config(text_config), "--output", target, "--overwrite"]
    assert_user_error(capsys, argv, "output", "results.txt", untouched=(tmp_path,))


def test_output_dir_from_config_is_checked_too(capsys, text_config, write_config, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me", encoding="utf-8")
    argv = ["train", write_config(text_config | {"output_dir": str(blocker / "run")})]
    assert_user_error(capsys, argv, "output", "blocker", untouched=(tmp_path,))


# --- eval and predict ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_bert, sentiment_files, tmp_path_factory) -> Path:
    """A run directory as ``train`` leaves it (an untrained head is enough to be read back)."""
    from tunelab.config import dump_config, validate
    from tunelab.data import read_data
    from tunelab.models import load_model, save_model

    config = validate(
        {
            "model": {"source": str(tiny_bert)},
            "data": {key: str(path) for key, path in sentiment_files.items()} | {"max_length": 32},
        }
    )
    run_dir = tmp_path_factory.mktemp("finished-run")
    raw = read_data(config)
    loaded = load_model(config, raw.labels)
    save_model(loaded, loaded.model, run_dir / "model", raw.labels, config.task)
    (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    return run_dir


def test_eval_on_a_folder_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    assert_user_error(capsys, ["eval", tmp_path], str(tmp_path), "no finished model", untouched=(tmp_path,))


def test_eval_on_a_missing_folder(capsys, tmp_path):
    assert_user_error(capsys, ["eval", tmp_path / "nowhere"], "run directory not found", "nowhere")


EVAL_DATA = {
    "missing-file": ("gone.csv", None, ["--data", "file not found", "gone.csv"]),
    "no-label-column": ("unlabelled.csv", b"text\nnice\n", ["--data", "'label'", "unlabelled.csv"]),
    "unseen-label": ("new.csv", b"text,label\nnice,pos\nmeh,neutral\n", ["--data", "'neutral'", "row 2"]),
    "not-utf8": ("latin.csv", LATIN1, ["--data", "latin.csv", "UTF-8"]),
}


@pytest.mark.parametrize(("name", "content", "names"), EVAL_DATA.values(), ids=EVAL_DATA.keys())
def test_eval_with_bad_data_file(capsys, finished_run, tmp_path, name, content, names):
    argv = ["eval", finished_run, "--data", _planted(tmp_path, name, content)]
    assert_user_error(capsys, argv, *names, untouched=(finished_run, tmp_path))


def _planted(folder, name: str, content: bytes | None):
    """A file with ``content`` in ``folder`` (or just its path when content is None)."""
    path = folder / name
    if content is not None:
        path.write_bytes(content)
    return path


def test_eval_with_damaged_run_config(capsys, finished_run, tmp_path, copy_tree):
    run_dir = copy_tree(finished_run, tmp_path / "damaged")
    (run_dir / "config.yaml").write_text("data: [oops\n", encoding="utf-8")
    assert_user_error(capsys, ["eval", run_dir], "config.yaml", "invalid YAML", untouched=(run_dir,))


def test_predict_on_a_damaged_model_meta(capsys, finished_run, tmp_path, copy_tree):
    run_dir = copy_tree(finished_run, tmp_path / "damaged")
    (run_dir / "model" / "tunelab.json").write_text("{", encoding="utf-8")
    argv = ["predict", run_dir, "--text", "hello"]
    assert_user_error(capsys, argv, "tunelab.json", untouched=(run_dir,))


PREDICT_INPUTS = {
    "missing-file": ("gone.csv", None, ["--input", "gone.csv"]),
    "missing-txt": ("gone.txt", None, ["--input", "gone.txt"]),
    "empty-txt": ("empty.txt", b"\n\n", ["--input", "empty.txt"]),
    "not-utf8-txt": ("latin.txt", b"caf\xe9\n", ["--input", "latin.txt", "UTF-8"]),
    "no-text-column": ("other.csv", b"review\nnice\n", ["--input", "'text'", "other.csv"]),
    "unsupported-extension": ("inputs.docx", b"PK", ["--input", "inputs.docx", ".csv"]),
}


@pytest.mark.parametrize(("name", "content", "names"), PREDICT_INPUTS.values(), ids=PREDICT_INPUTS.keys())
def test_predict_with_bad_input(capsys, finished_run, tmp_path, name, content, names):
    argv = ["predict", finished_run, "--input", _planted(tmp_path, name, content)]
    assert_user_error(capsys, argv, *names, untouched=(finished_run, tmp_path))


def test_predict_on_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert_user_error(capsys, ["predict", tmp_path, "--text", "hi"], str(tmp_path), "no finished model")


# --- the command line itself ---------------------------------------------------------------

ARGV_CASES = {
    "no-command": ([], ["command"]),
    "unknown-command": (["trian", "run.yaml"], ["invalid choice", "trian"]),
    "train-without-config": (["train"], ["config"]),
    "unknown-option": (["train", "run.yaml", "--lr", "1"], ["--lr"]),
    "set-without-value": (["train", "run.yaml", "--set"], ["--set"]),
    "predict-without-input": (["predict", "runs/x"], ["--input", "--text"]),
    "predict-input-and-text": (["predict", "runs/x", "--input", "a.csv", "--text", "b"], ["--text", "--input"]),
    "eval-without-run-dir": (["eval"], ["run_dir"]),
}


@pytest.mark.parametrize(("argv", "names"), ARGV_CASES.values(), ids=ARGV_CASES.keys())
def test_bad_command_line(capsys, argv, names):
    assert_user_error(capsys, argv, *names)


# --- generated garbage ---------------------------------------------------------------------


def _leaf_keys(model=RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is list:  # a list of sections (retain sets) is one key
            keys.append(f"{prefix}{name}")
            continue
        candidates = getattr(field.annotation, "__args__", (field.annotation,))
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, RunConfig.__base__)), None)
        keys += _leaf_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


KNOWN_KEYS = _leaf_keys()
GARBAGE = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
KEY_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0."), min_size=1, max_size=10)
HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_counter = itertools.count()


def _garbage_run(capsys, config: dict, overrides: tuple[str, ...] = ()) -> str:
    """Train on ``config`` whose data.train does not exist: a config error comes first if any."""
    folder = Path(tempfile.mkdtemp(prefix=f"garbage{next(_counter)}-"))
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    argv = ["train", path, "--output", folder / "run", "--quiet"]
    argv += [arg for override in overrides for arg in ("--set", override)]
    return assert_user_error(capsys, argv, untouched=(folder,))


@pytest.fixture
def garbage_config(text_config, tmp_path) -> dict:
    return set_key(text_config, "data.train", str(tmp_path / "not-there.csv"))


@HYPOTHESIS
@given(key=st.sampled_from(KNOWN_KEYS), value=GARBAGE)
@example(key="continual.memory_per_task", value=1)  # once drawn: a valid value in a section that needs more
def test_garbage_value_for_a_known_key(capsys, garbage_config, key, value):
    config = set_key(yaml.safe_load(yaml.safe_dump(garbage_config)), key, value)
    line = _garbage_run(capsys, config)
    # The key, or its sub-section when a valid value there needs more (forgetting.replay needs a retain set),
    # or a required key of the same section that setting this one brought into being (distill.teacher),
    # or that section itself when it needs more than this key (continual.memory_per_task: 1 alone
    # leaves continual with neither a benchmark nor tasks).
    section = key.rsplit(".", 1)[0]
    named = [key.rsplit(".", 1)[-1], "not-there.csv"] + ([section] if "." in section else [])
    named += [f"missing required key '{key.split('.')[0]}.", f": {key.split('.')[0]}: "] if "." in key else []
    assert any(part in line for part in named), line


@HYPOTHESIS
@given(section=st.sampled_from(["", "model.", "data.", "optim.", "train.", "strategy."]), name=KEY_NAMES)
def test_unknown_key(capsys, garbage_config, section, name):
    key = f"{section}{name}"
    if key.strip() in KNOWN_KEYS or section == "" and name in RunConfig.model_fields:
        return
    config = set_key(yaml.safe_load(yaml.safe_dump(garbage_config)), key, 1)
    line = _garbage_run(capsys, config)
    assert "unknown key" in line and "allowed here" in line, line


@HYPOTHESIS
@given(override=st.text(max_size=30))
def test_garbage_override(capsys, garbage_config, override):
    _garbage_run(capsys, garbage_config, (override,))


# --- train --resume ------------------------------------------------------------------------

RESUME_CASES = {
    # what RUN_DIR holds, the other arguments, what the error names
    "folder-not-a-run": ("notes", [], ["not a tunelab run directory", "config.yaml"]),
    "missing-folder": (None, [], ["nowhere", "not a tunelab run directory"]),
    "finished-run": ("finished", [], ["already finished", "results.json"]),
    "with-config": ("stopped", ["CONFIG"], ["--resume", "drop CONFIG"]),
    "with-set": ("stopped", ["--set", "optim.lr=0.1"], ["--resume", "--set"]),
    "with-output": ("stopped", ["--output", "elsewhere"], ["--resume", "--output"]),
    "with-overwrite": ("stopped", ["--overwrite"], ["--resume", "--overwrite"]),
    "damaged-config": ("bad-config", [], ["config.yaml", "train.epochs"]),
    "data-gone": ("data-gone", [], ["data.train", "file not found", "gone.csv"]),
}


@pytest.mark.parametrize(("holds", "extra", "names"), RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_bad_resume(capsys, text_config, tmp_path, holds, extra, names):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(text_config), encoding="utf-8")
    run_dir = tmp_path / ("nowhere" if holds is None else "run")
    if holds is not None:
        run_dir.mkdir()
    if holds == "notes":
        (run_dir / "notes.txt").write_text("hello", encoding="utf-8")
    if holds in ("stopped", "finished", "bad-config", "data-gone"):
        config = text_config
        if holds == "bad-config":
            config = set_key(config, "train.epochs", 0)
        if holds == "data-gone":
            config = set_key(config, "data.train", str(tmp_path / "gone.csv"))
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if holds == "finished":
        (run_dir / "results.json").write_text("{}", encoding="utf-8")
    argv = ["train", "--resume", run_dir, *(config_file if arg == "CONFIG" else arg for arg in extra), "--quiet"]
    assert_user_error(capsys, argv, *names, untouched=(tmp_path,))
