"""Choosing what users should not guess: the learning rate (a range test) and the rest of the
configuration (an Optuna study)."""
