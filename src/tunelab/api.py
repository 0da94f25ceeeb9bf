"""The Python API: one call fine-tunes, one call opens a finished run.

    import tunelab
    run = tunelab.fine_tune("examples/sst2-minilm.yaml", strategy__name="lora", optim__lr=2e-3)
    run.results["final"]["validation"]["accuracy"]
    tunelab.load_run(run.run_dir).predict(["a lovely film"])

Overrides are the dotted keys of ``--set``, written with ``__`` for the dots (or passed as
``**{"optim.lr": 2e-3}``). Every layer beneath is public on its own: ``tunelab.config`` to build
a config, ``tunelab.builder`` for the training phases, ``tunelab.tasks`` and
``tunelab.strategies`` to register new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from tunelab.config import RunConfig, dump_config, load_config
from tunelab.rundir import CONFIG, MODEL, REPORT, RESULTS, existing_run


@dataclass(frozen=True)
class Run:
    """A finished run: its folder, results and config, and its model loaded on first use."""

    run_dir: Path

    @cached_property
    def results(self) -> dict:
        import json

        return json.loads((self.run_dir / RESULTS).read_text(encoding="utf-8"))

    @cached_property
    def config(self) -> RunConfig:
        return load_config(self.run_dir / CONFIG)

    @cached_property
    def model(self):
        """The fine-tuned model with its tokenizer or image transform and its labels (a ``LoadedModel``)."""
        from tunelab.models import load_saved_model

        return load_saved_model(self.run_dir / MODEL, self.config)

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT

    def predict(self, texts: str | list[str] | None = None, *, input: str | Path | None = None) -> list[dict]:  # noqa: A002
        """What ``tunelab predict`` prints, one dict per row: texts given here, or a file or image folder."""
        from tunelab.recipes.predict import run_prediction

        if (texts is None) == (input is None):
            raise ValueError("predict: give texts or input=, not both")
        texts = [texts] if isinstance(texts, str) else texts
        path = str(input) if input is not None else None
        return run_prediction(self.run_dir, path, texts, opened=(self.config, self.model))

    def evaluate(self, data: str | Path | None = None) -> dict:
        """What ``tunelab eval`` prints: metrics of the run's own splits, or of a labelled file."""
        from tunelab.recipes.evaluate import run_evaluation

        return run_evaluation(self.run_dir, str(data) if data is not None else None)[0]


def fine_tune(
    config: str | Path | dict | RunConfig,
    output: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **overrides,
) -> Run:
    """Train ``config`` (a YAML file, a dict as the YAML would hold, or a :class:`RunConfig`) with
    ``overrides`` applied; the run goes to ``output`` (default: the config's ``output_dir``, or
    ``runs/<config file name>``). A bad config or data raises :class:`tunelab.errors.UserError`
    with the one line the command line prints."""
    from tunelab.builder.fresh import train_into

    settings = [f"{key.replace('__', '.')}={_yaml(value)}" for key, value in overrides.items()]
    if isinstance(config, RunConfig):
        config = yaml.safe_load(dump_config(config))
    if isinstance(config, dict):
        validated, default_output = load_config(None, settings, base=config), "runs/run"
    else:
        validated, default_output = load_config(config, settings), f"runs/{Path(config).stem}"
    run_dir, _ = train_into(validated, output or validated.output_dir or default_output, overwrite, progress=progress)
    return Run(run_dir)


def load_run(run_dir: str | Path) -> Run:
    """A finished run, ready to predict: ``load_run("runs/sst2").predict(["great film"])``."""
    return Run(existing_run(run_dir))


def _yaml(value) -> str:
    """A value as ``--set`` text, so overrides here and on the command line are read alike."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
