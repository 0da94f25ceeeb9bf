"""Inputs that are almost surely mistakes end with one line naming what is wrong and exit 2,
before anything runs, and nothing the user made changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

DIGITS = {
    "task": "image-classification",
    "model": {"source": "cnn"},
    "data": {"train": "digits", "digits_classes": [0, 1], "digits_train_per_class": 10},
    "train": {"epochs": 1, "batch_size": 10, "checkpoint_every": None},
}


def refused(capsys, *argv) -> str:
    """Run the command, check it refused with one line, and return that line."""
    capsys.readouterr()
    assert main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def write(tmp_path, config: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("train", "batch_size", True), ("train", "epochs", False), ("optim", "lr", True), (None, "seed", True)],
)
def test_true_or_false_for_a_number_is_refused(tmp_path, capsys, section, key, value):
    config = DIGITS | ({section: DIGITS.get(section, {}) | {key: value}} if section else {key: value})
    err = refused(capsys, "train", write(tmp_path, config), "-o", tmp_path / "run")
    dotted = f"{section}.{key}" if section else key
    assert f"{dotted}: expected a number, not {str(value).lower()}" in err
    assert not (tmp_path / "run").exists()


def test_a_section_given_twice_is_refused_naming_its_line(tmp_path, capsys):
    text = "data:\n  train: digits\ntrain:\n  epochs: 2\ntrain:\n  epochs: 30\n"
    err = refused(capsys, "train", write(tmp_path, text), "-o", tmp_path / "run")
    assert "invalid YAML (line 5): 'train' is given twice at the same level" in err


def test_a_key_given_twice_inside_a_section_is_refused(tmp_path, capsys):
    text = "data:\n  train: digits\noptim:\n  lr: 0.001\n  lr: 0.5\n"
    assert "'lr' is given twice" in refused(capsys, "train", write(tmp_path, text), "-o", tmp_path / "run")


def test_a_device_a_fifo_or_a_folder_is_not_a_config(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", "/dev/null", fifo, tmp_path):
        assert f"{path}: not a regular file" in refused(capsys, "train", path, "-o", tmp_path / "run")


@pytest.mark.parametrize(("given", "says"), [(",,,", "no name given"), ("full,,lora", "an empty name between commas")])
def test_compare_refuses_empty_strategy_names(tmp_path, capsys, given, says):
    err = refused(capsys, "compare", write(tmp_path, DIGITS), "--strategies", given, "-o", tmp_path / "cmp")
    assert f"--strategies: {says}" in err and not (tmp_path / "cmp").exists()


def test_tune_refuses_zero_trials_and_a_storage_it_cannot_open(tmp_path, capsys):
    config = write(tmp_path, DIGITS)
    assert "--trials: must be 1 or more" in refused(capsys, "tune", config, "--trials", 0, "-o", tmp_path / "t")
    storage = "sqlite:////nonexistent-folder/study.db"
    err = refused(capsys, "tune", config, "--trials", 1, "--storage", storage, "-o", tmp_path / "t2")
    assert f"--storage: cannot open {storage}" in err


def test_audit_refuses_a_negative_probe_row_count(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    err = refused(capsys, "audit", "--data", tmp_path / "train.csv", "--probe-rows", -5, "-o", tmp_path / "a")
    assert "--probe-rows: must be 0 or more" in err


@pytest.mark.parametrize(
    ("given", "says"),
    [("naive,,bogus", "--methods: an empty name between commas"), ("naive,bogus", "'bogus' is not a continual method")],
)
def test_continual_names_the_bad_method(tmp_path, capsys, given, says):
    config = write(tmp_path, {"continual": {"benchmark": "split-digits"}})
    assert says in refused(capsys, "continual", config, "--methods", given, "-o", tmp_path / "c")


def test_quantize_into_the_run_itself_is_refused_and_the_run_is_untouched(tmp_path, capsys):
    assert main(["train", str(write(tmp_path, DIGITS)), "-o", str(tmp_path / "run"), "-q"]) == 0
    before = hashes(tmp_path / "run")
    err = refused(capsys, "quantize", tmp_path / "run", "-o", tmp_path / "run", "--overwrite")
    assert "--output is the run itself" in err
    assert hashes(tmp_path / "run") == before


@pytest.mark.parametrize("command", ["export", "distill"])
def test_quiet_commands_show_no_bars_from_transformers(text_config, tmp_path, capsys, command):
    import transformers

    text_config["train"] |= {"epochs": 1, "checkpoint_every": None}
    assert main(["train", str(write(tmp_path, text_config)), "-o", str(tmp_path / "run"), "-q"]) == 0
    transformers.utils.logging.enable_progress_bar()  # as a fresh process has it
    capsys.readouterr()
    extra = ["--student", "layers:1"] if command == "distill" else []
    assert main([command, str(tmp_path / "run"), *extra, "-o", str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err, err


class _Planted:
    """Unpickling this makes a folder: the sign that a pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_model_whose_weights_are_a_pickle_with_code_is_refused_in_one_line(tiny_bert, text_config, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    source = tmp_path / "pickled"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / name, source / name)
    weights = load_file(tiny_bert / "model.safetensors") | {"planted": _Planted(tmp_path / "ran")}
    torch.save(weights, source / "pytorch_model.bin")
    before = hashes(source)
    config = write(tmp_path, text_config | {"model": {"source": str(source)}})
    err = refused(capsys, "train", config, "-o", tmp_path / "run")
    assert "keeps its weights in a pickle that holds more than tensors" in err
    assert not (tmp_path / "ran").exists() and hashes(source) == before


def test_max_steps_has_a_bound_and_says_it_replaces_epochs(tmp_path, capsys):
    huge = DIGITS | {"train": DIGITS["train"] | {"max_steps": 99999999999999999999999}}
    assert "train.max_steps: Input should be less than or equal to 1000000000" in refused(
        capsys, "train", write(tmp_path, huge), "-o", tmp_path / "huge"
    )
    three = DIGITS | {"train": DIGITS["train"] | {"max_steps": 3}}
    assert main(["train", str(write(tmp_path, three)), "-o", str(tmp_path / "run"), "-q"]) == 0
    assert "train.max_steps: 3 steps (1.5 epochs of 2) in place of train.epochs" in capsys.readouterr().err


def test_one_number_written_two_ways_is_refused_not_made_two_classes(tmp_path, capsys):
    rows = [("a", 1), ("b", "1.0"), ("c", 0), ("d", 0)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(f'{{"text": "{t}", "label": {json.dumps(y)}}}\n' for t, y in rows), encoding="utf-8")
    before = data.read_bytes()
    err = refused(capsys, "train", write(tmp_path, {"data": {"train": str(data)}}), "-o", tmp_path / "run")
    assert "writes one number two ways ('1' at data row 1, '1.0' at data row 2)" in err
    assert data.read_bytes() == before


@pytest.mark.parametrize("label", [[1, 2], {"a": 1}, "NaN", "inf"])
def test_a_label_that_is_a_list_or_not_a_number_is_refused_naming_the_row(tmp_path, capsys, label):
    data = tmp_path / "labels.jsonl"
    rows = [{"text": "fine", "label": 1}, {"text": "odd", "label": label}, {"text": "dull", "label": 0}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    err = refused(capsys, "train", write(tmp_path, {"data": {"train": str(data)}}), "-o", tmp_path / "run")
    assert f"holds {label!r} at data row 2; a label is one class name or number per row" in err


@pytest.mark.parametrize("text", ["\u200b\u200b", "\ufeff", "\u3000 \u00a0", "\t \t"])
def test_a_text_with_nothing_visible_is_an_empty_text(tiny_bert, tmp_path, capsys, text):
    data = tmp_path / "train.jsonl"
    rows = [{"text": text, "label": "pos"}] + [{"text": w, "label": y} for w, y in [("good", "pos"), ("bad", "neg")]]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = write(tmp_path, {"model": {"source": str(tiny_bert)}, "data": {"train": str(data)}})
    assert "have an empty 'text' (first: data row 1)" in refused(capsys, "train", config, "-o", tmp_path / "run")


@pytest.mark.parametrize("rows", [[("good", "pos"), ("bad", "neg")], [("a", "x"), ("b", "y"), ("c", "z")]])
def test_too_few_rows_to_hold_out_a_validation_split_says_so(tiny_bert, tmp_path, capsys, rows):
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    config = {"task": "text-classification", "model": {"source": str(tiny_bert)}, "data": {"train": str(data)}}
    before = hashes(tmp_path)
    err = refused(capsys, "train", write(tmp_path, config), "-o", tmp_path / "run")
    classes = len({label for _, label in rows})
    assert f"data.train: too few rows to hold out a validation split ({len(rows)} rows, {classes} classes" in err
    assert "add rows or give data.validation" in err
    assert not (tmp_path / "run").exists()
    assert {k: v for k, v in hashes(tmp_path).items() if k != "run.yaml"} == before


# -- ten more of our own: hostile files, concurrent use, resources running out ----------------------


def test_yaml_nested_a_hundred_thousand_deep_is_refused_not_a_recursion_error(tmp_path, capsys):
    deep = write(tmp_path, "train: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "invalid YAML: nested too deeply to be a config" in refused(capsys, "train", deep, "-o", tmp_path / "run")


def test_a_config_of_many_megabytes_is_refused_before_it_is_read(tmp_path, capsys):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as file:
        file.truncate(300 * 2**20)  # sparse: 300 MB of nothing, read in a second or two if read at all
    assert "300 MB is no config" in refused(capsys, "train", huge, "-o", tmp_path / "run")


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("deep.jsonl", '{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": 1}\n', "line 1 is nested too deeply"),
        ("nul.csv", "text,label\nfine,pos\ngood\x00movie,neg\n", "data row 2 of {path} holds a NUL byte in 'text'"),
        ("nul.jsonl", '{"text": "a\\u0000b", "label": 1}\n{"text": "c", "label": 0}\n', "data row 1 of {path}"),
    ],
)
def test_hostile_table_files_are_one_line_naming_the_row(tmp_path, capsys, name, content, says):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = hashes(tmp_path)
    err = refused(capsys, "audit", "--data", path, "-o", tmp_path / "audit")
    assert says.format(path=path) in err
    assert hashes(tmp_path) == before


def test_a_pipe_or_a_device_as_data_is_not_read(tiny_bert, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.csv")  # reading it would wait for a writer for ever
    (tmp_path / "zero.csv").symlink_to("/dev/zero")  # reading it would never end
    for name in ("pipe.csv", "zero.csv"):
        config = {"task": "text-classification", "model": {"source": str(tiny_bert)}, "data": {"train": name}}
        err = refused(capsys, "train", write(tmp_path, config | {"data": {"train": str(tmp_path / name)}}))
        assert f"data.train: {tmp_path / name} is not a regular file (a pipe or a device)" in err


def test_a_pipe_a_device_or_a_broken_link_in_an_image_folder_is_named(tmp_path, capsys):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (8, 8), (60 * index, 0, 0)).save(tmp_path / "images" / label / f"{index}.png")
    config = {"task": "image-classification", "model": {"source": "cnn"},
              "data": {"train": str(tmp_path / "images"), "image_size": 8}, "train": {"epochs": 1}}  # fmt: skip
    config_file = write(tmp_path, config)
    plant = tmp_path / "images" / "a" / "x.png"
    for make in (os.mkfifo, lambda path: path.symlink_to("/dev/zero"), lambda path: path.symlink_to("gone.png")):
        make(plant)
        err = refused(capsys, "train", config_file, "-o", tmp_path / "run")
        assert f"data.train: {plant} is not a regular file" in err
        plant.unlink()
        assert not (tmp_path / "run").exists()


def test_a_small_image_folder_holds_out_one_validation_image_per_class(tmp_path, capsys):
    """Ten images of two classes at validation_fraction 0.1: sklearn alone refuses (one validation
    row for two classes); one per class is held out instead."""
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(5):
            Image.new("RGB", (8, 8), (50 * index, 0, 255 * (label == "b"))).save(
                tmp_path / "images" / label / f"{index}.png"
            )
    config = {"task": "image-classification", "model": {"source": "cnn"},
              "data": {"train": str(tmp_path / "images"), "image_size": 8}, "train": {"epochs": 1}}  # fmt: skip
    assert main(["train", str(write(tmp_path, config)), "-o", str(tmp_path / "run"), "-q", "--json"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["examples"] == {"train": 8, "validation": 2}


@pytest.fixture
def finished_digits_run(tmp_path) -> Path:
    assert main(["train", str(write(tmp_path, DIGITS)), "-o", str(tmp_path / "run"), "-q"]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize(("meta", "says"), [({}, "damaged (no 'kind')"), (None, "damaged (labels is not a list)")])
def test_a_model_record_missing_what_loading_needs_is_one_line(finished_digits_run, capsys, meta, says):
    record = finished_digits_run / "model" / "tunelab.json"
    if meta is None:
        meta = json.loads(record.read_text()) | {"labels": "0,1"}
    record.write_text(json.dumps(meta), encoding="utf-8")
    before = hashes(finished_digits_run)
    for command in (["eval", finished_digits_run], ["predict", finished_digits_run, "--input", record]):
        assert f"{record}: {says}" in refused(capsys, *command)
    assert hashes(finished_digits_run) == before


def test_predict_never_writes_over_its_input(finished_digits_run, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "query.png"
    Image.new("RGB", (8, 8)).save(image)
    before = hashes(tmp_path / "run")
    original = image.read_bytes()
    assert "already exists" in refused(capsys, "predict", finished_digits_run, "--input", image, "-o", image)
    assert image.read_bytes() == original and hashes(tmp_path / "run") == before


def test_a_full_disk_while_saving_the_final_model_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import tunelab.models.saving as saving

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(saving, "save_safetensors", full)
    config = DIGITS | {"train": DIGITS["train"] | {"checkpoint_every": "epoch"}}
    err = refused(capsys, "train", write(tmp_path, config), "-o", tmp_path / "run")
    assert "output: cannot write" in err and "No space left on device" in err
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob("run/.model*"))  # no half model left
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "run"), "-q"]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_ctrl_c_on_an_overwrite_run_puts_the_earlier_run_back_and_says_so(tmp_path, capsys, monkeypatch):
    import signal

    import tunelab.builder.training as train_recipe
    from tunelab.engine.callbacks import Callback

    config = write(tmp_path, DIGITS | {"train": DIGITS["train"] | {"epochs": 3, "batch_size": 4}})
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "-q"]) == 0
    before = hashes(tmp_path / "run")

    class CtrlC(Callback):
        def on_step_end(self, state):
            if state.step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    fit = train_recipe.fit
    monkeypatch.setattr(
        train_recipe, "fit", lambda *args, **kwargs: fit(*args[:3], [CtrlC(), *args[3]], *args[4:], **kwargs)
    )
    capsys.readouterr()
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--overwrite", "-q"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted at step 2; {tmp_path / 'run'} holds the run it was replacing again", err
    assert hashes(tmp_path / "run") == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as usual again


def test_a_pipe_or_a_device_as_predict_input_is_not_read(finished_digits_run, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    for given in (tmp_path / "pipe.png", tmp_path / "zero.png", Path("/dev/null")):
        err = refused(capsys, "predict", finished_digits_run, "--input", given)
        assert f"--input: {given} is not a regular file (a pipe or a device)" in err


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_of_a_run_follows_the_umask_weights_included(tmp_path, umask):
    previous = os.umask(umask)
    try:
        config = DIGITS | {"train": DIGITS["train"] | {"checkpoint_every": "epoch"}}
        assert main(["train", str(write(tmp_path, config)), "-o", str(tmp_path / "run"), "-q"]) == 0
        assert main(["quantize", str(tmp_path / "run"), "-o", str(tmp_path / "int8"), "-q"]) == 0
    finally:
        os.umask(previous)
    files = [path for folder in ("run", "int8") for path in (tmp_path / folder).rglob("*") if path.is_file()]
    assert any(path.name == "model.safetensors" for path in files)  # the files safetensors made 0600
    modes = {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777) for path in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
