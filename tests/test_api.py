"""The Python API: ``tunelab.fine_tune`` and ``tunelab.load_run``, and the README's example of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import tunelab
from tunelab.cli import main
from tunelab.config import validate
from tunelab.errors import UserError

README = Path(__file__).parents[1] / "README.md"


def test_the_readmes_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    assert text.index("<!-- api-example") < 2500  # on the README's first screen
    code = re.search(r"<!-- api-example.*?-->\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the project's own README
    trained, evaluated = (float(line.split()[0]) for line in capsys.readouterr().out.splitlines())
    assert trained == evaluated and trained > 0.8
    saved = yaml.safe_load((tmp_path / "runs" / "api-digits" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 3e-3 and saved["train"]["epochs"] == 4


def test_overrides_a_config_file_and_predicts_like_the_command_line(text_config, write_config, tmp_path, capsys):
    path = write_config(text_config)
    run = tunelab.fine_tune(path, tmp_path / "run", progress=False, train__epochs=1, **{"optim.lr": 2e-3})
    assert run.run_dir == tmp_path / "run" and run.config.optim.lr == 2e-3 and run.config.train.epochs == 1
    assert run.results["steps"] == 64 // 8 and run.report.is_file()  # one epoch of 64 rows
    assert run.results == json.loads((tmp_path / "run" / "results.json").read_text())

    texts = ["a great lovely movie", "the plot was awful and dull"]
    assert main(["predict", str(tmp_path / "run"), "--text", texts[0], "--text", texts[1], "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    loaded = tunelab.load_run(tmp_path / "run")
    assert loaded.predict(texts) == printed
    assert loaded.predict(texts[0]) == printed[:1]
    assert loaded.evaluate()["validation"]["loss"] == pytest.approx(run.results["final"]["validation"]["loss"])
    assert loaded.model.labels.names == ("neg", "pos")


def test_a_config_object_trains_and_the_run_directory_is_never_overwritten(text_config, tmp_path):
    config = validate(text_config | {"train": text_config["train"] | {"epochs": 1}})
    first = tunelab.fine_tune(config, tmp_path / "run", progress=False)
    before = (first.run_dir / "model" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        tunelab.fine_tune(config, tmp_path / "run", progress=False)
    assert (first.run_dir / "model" / "model.safetensors").read_bytes() == before
    again = tunelab.fine_tune(config, tmp_path / "run", overwrite=True, progress=False, seed=1)
    assert again.config.seed == 1 and not (tmp_path / ".run.previous").exists()


def test_bad_overrides_and_missing_runs_say_which(text_config, tmp_path):
    with pytest.raises(UserError, match="unknown key 'optim.learning_rate'"):
        tunelab.fine_tune(text_config, tmp_path / "run", optim__learning_rate=1e-3)
    with pytest.raises(UserError, match="run directory not found"):
        tunelab.load_run(tmp_path / "nothing")
    with pytest.raises(ValueError, match="texts or input"):
        tunelab.api.Run(tmp_path).predict()
    assert not (tmp_path / "run").exists()
