"""The run builder: the phases every command walks (prepare, start, protect, schedule, baseline
or resume, train, finish, results, save), typed, each usable on its own. Recipes are the short
scripts of one command on top of it; nothing here imports a recipe."""

from tunelab.builder.prepare import PreparedRun, class_weights_for, find_rate, prepare_run
from tunelab.builder.training import Training, run_training

__all__ = ["PreparedRun", "Training", "class_weights_for", "find_rate", "prepare_run", "run_training"]
