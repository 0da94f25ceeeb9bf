"""classification_metrics against values worked out by hand.

Logits are log-probabilities, so the softmax the metrics take gives back exactly the
probabilities written in each test, and every expected number can be checked on paper.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.evaluate.metrics import classification_metrics


def metrics_for(probabilities: list[list[float]], truth: list[int]) -> dict:
    logits = torch.tensor(probabilities, dtype=torch.float64).log()
    return classification_metrics(logits, torch.tensor(truth), num_labels=len(probabilities[0]))


# Six examples, three classes. Predicted (argmax): 0, 1, 1, 1, 2, 0.
THREE_CLASS_PROBABILITIES = [
    [0.6, 0.3, 0.1],  # true 0, predicted 0
    [0.3, 0.5, 0.2],  # true 0, predicted 1
    [0.2, 0.7, 0.1],  # true 1, predicted 1
    [0.1, 0.6, 0.3],  # true 1, predicted 1
    [0.2, 0.1, 0.7],  # true 2, predicted 2
    [0.5, 0.1, 0.4],  # true 2, predicted 0
]
THREE_CLASS_TRUTH = [0, 0, 1, 1, 2, 2]


def test_three_class_metrics_match_hand_computed_values():
    metrics = metrics_for(THREE_CLASS_PROBABILITIES, THREE_CLASS_TRUTH)

    assert metrics["examples"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # precision per class: 1/2 (class 0 predicted twice, once right), 2/3, 1/1
    assert metrics["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # recall per class: 1/2, 2/2, 1/2
    assert metrics["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # F1 per class: 2pr/(p+r) = 1/2, 4/5, 2/3
    assert metrics["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    expected_loss = -sum(math.log(p) for p in (0.6, 0.3, 0.7, 0.6, 0.7, 0.4)) / 6
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_multiclass_auc_is_macro_one_vs_rest():
    metrics = metrics_for(THREE_CLASS_PROBABILITIES, THREE_CLASS_TRUTH)
    # Class 0 vs rest: positives score .6 and .3, negatives .2 .1 .2 .5 -> 7 of 8 pairs ordered.
    # Classes 1 and 2 vs rest: every positive outscores every negative -> 1.0 each.
    assert metrics["auc"] == pytest.approx((7 / 8 + 1 + 1) / 3)


def test_confusion_matrix_rows_are_true_columns_are_predicted():
    metrics = metrics_for(THREE_CLASS_PROBABILITIES, THREE_CLASS_TRUTH)
    assert metrics["confusion_matrix"] == [
        [1, 1, 0],  # true 0: one predicted 0, one predicted 1
        [0, 2, 0],  # true 1: both predicted 1
        [1, 0, 1],  # true 2: one predicted 0, one predicted 2
    ]


def test_binary_auc_counts_correctly_ordered_pairs():
    probabilities = [[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]]
    metrics = metrics_for(probabilities, [0, 0, 1, 1])
    # Positives score .4 and .8 for class 1; negatives .1 and .6: 3 of 4 pairs ordered.
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["confusion_matrix"] == [[1, 1], [1, 1]]


def test_auc_is_none_for_a_single_class_split():
    metrics = metrics_for([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], [0, 0, 0])
    assert metrics["auc"] is None
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["confusion_matrix"] == [[2, 1], [0, 0]]


def test_perfect_predictions_on_a_split_missing_a_class_score_one():
    """A class absent from both truth and predictions has no precision or recall to average.

    Counting it as 0 would report macro F1 2/3 for a flawless model on a split (say a small
    validation set) that happens to hold only two of three classes.
    """
    probabilities = [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]]
    metrics = metrics_for(probabilities, [0, 0, 1, 1])
    assert metrics["accuracy"] == 1.0
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == pytest.approx(1.0)
    assert metrics["auc"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_predicting_a_class_absent_from_the_split_still_costs_precision():
    probabilities = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]]
    metrics = metrics_for(probabilities, [0, 0, 1, 1])
    # Classes 0, 1 and (wrongly predicted) 2: precision 1, 1, 0; recall 1/2, 1, 0 (no true 2s).
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(1.5 / 3)
    assert metrics["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_non_finite_logits_give_no_auc_instead_of_an_error():
    logits = torch.tensor([[float("nan"), 0.0], [1.0, 0.0], [0.0, float("inf")]])
    metrics = classification_metrics(logits, torch.tensor([0, 0, 1]), num_labels=2)
    assert metrics["auc"] is None
    assert metrics["examples"] == 3
