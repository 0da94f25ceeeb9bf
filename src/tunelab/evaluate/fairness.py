"""Per-group metrics and the largest gap between groups, computed with fairlearn's MetricFrame.

A group is a value of ``data.group_column`` (a dialect, a region, a product line). Gaps are taken
over the groups holding at least ``MIN_GROUP_EXAMPLES`` rows when two or more do, since a gap to a
group of three rows is noise; every group is still listed with its size.
"""

from __future__ import annotations

import functools

import numpy as np

MIN_GROUP_EXAMPLES = 20
GAP_METRICS = ("accuracy", "f1")
BINARY_RATES = ("positive_rate", "true_positive_rate", "false_positive_rate")


def group_metrics(truth, predicted, groups: list[str], num_labels: int) -> dict:
    """Accuracy and macro F1 per group (and, for two classes, the rates behind demographic parity
    and equalized odds), with the largest gap between the groups compared."""
    # Imported here: fairlearn and scikit-learn take seconds to import, and most runs have no groups.
    from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = np.asarray(truth), np.asarray(predicted)
    metrics = {
        "examples": count,
        "accuracy": accuracy_score,
        "f1": functools.partial(f1_score, average="macro", zero_division=0),
    }
    if num_labels == 2:
        metrics |= {
            "positive_rate": functools.partial(selection_rate, pos_label=1),
            "true_positive_rate": functools.partial(_defined_rate, true_positive_rate, positive=True),
            "false_positive_rate": functools.partial(_defined_rate, false_positive_rate, positive=False),
        }
    frame = MetricFrame(
        metrics=metrics, y_true=truth, y_pred=predicted, sensitive_features=np.asarray(groups, dtype=str)
    )
    by_group = {
        str(group): {name: _number(value) for name, value in row.items()} | {"examples": int(row["examples"])}
        for group, row in frame.by_group.iterrows()
    }
    large = [group for group, row in by_group.items() if row["examples"] >= MIN_GROUP_EXAMPLES]
    compared = large if len(large) >= 2 else list(by_group)
    result = {
        "by_group": by_group,
        "compared": compared,
        "largest_gap": {name: _gap(by_group, compared, name) for name in GAP_METRICS},
    }
    if num_labels == 2:
        rates = {name: _gap(by_group, compared, name) for name in BINARY_RATES}
        result["demographic_parity_difference"] = rates["positive_rate"]["gap"]
        odds = [rates[name]["gap"] for name in ("true_positive_rate", "false_positive_rate")]
        defined = [gap for gap in odds if gap is not None]
        result["equalized_odds_difference"] = max(defined) if defined else None
    return result


def _defined_rate(rate, y_true, y_pred, positive: bool) -> float:
    """fairlearn's rate, or NaN where the group holds no row of the class it conditions on."""
    if not np.any(np.asarray(y_true) == (1 if positive else 0)):
        return float("nan")
    return rate(y_true, y_pred, pos_label=1)


def _gap(by_group: dict, compared: list[str], name: str) -> dict:
    """Highest minus lowest group on one metric, naming both; None where fewer than two groups have it."""
    values = {group: by_group[group][name] for group in compared if by_group[group][name] is not None}
    if len(values) < 2:
        return {"gap": None, "highest": None, "lowest": None}
    highest, lowest = max(values, key=values.get), min(values, key=values.get)
    return {"gap": values[highest] - values[lowest], "highest": highest, "lowest": lowest}


def _number(value) -> float | None:
    return None if value != value else float(value)
