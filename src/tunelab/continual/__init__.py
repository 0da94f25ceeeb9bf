"""Continual learning: a sequence of tasks learned one after another, with the accuracy matrix
R[i][j] (accuracy on task j after learning task i), average accuracy, backward transfer and
forward transfer (Lopez-Paz and Ranzato, 2017)."""
