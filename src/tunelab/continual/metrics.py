"""Summaries of the accuracy matrix (Lopez-Paz and Ranzato, 2017, "Gradient Episodic Memory").

``matrix[i][j]`` is the accuracy on task j after learning task i; ``initial[j]`` the accuracy on
task j before any learning.
"""

from __future__ import annotations


def summarise(matrix: list[list[float]], initial: list[float]) -> dict:
    tasks = len(initial)
    last = matrix[-1]
    finished = len(matrix) == tasks
    summary = {"average_accuracy": sum(last[: len(matrix)]) / len(matrix)}
    if finished and tasks > 1:
        # Backward transfer: how learning later tasks changed earlier ones (negative = forgetting).
        summary["backward_transfer"] = sum(last[j] - matrix[j][j] for j in range(tasks - 1)) / (tasks - 1)
        # Forward transfer: what earlier tasks did for a task before it was learned, over its start.
        summary["forward_transfer"] = sum(matrix[j - 1][j] - initial[j] for j in range(1, tasks)) / (tasks - 1)
    return summary
