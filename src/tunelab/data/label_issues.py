"""Suspected label errors: out-of-fold probabilities from a cheap probe on the base model's features,
ranked by cleanlab's label-quality score (confident learning, Northcutt et al., 2021).

The probe is a logistic regression on the frozen model's mean-pooled token vectors, fitted in
five folds so that every row is scored by a probe that never saw it.
"""

from __future__ import annotations

import numpy as np
import torch

from tunelab.models.pooled import PooledClassifier, mean_pool

SHOWN_SUSPECTS = 20


@torch.inference_mode()
def text_features(loaded, texts: list[str], max_length: int, batch_size: int = 128, advance=None) -> np.ndarray:
    """Mean of the last hidden layer over real tokens, for each text."""
    model = loaded.model.eval()
    encoder = model.encoder if isinstance(model, PooledClassifier) else None
    features = []
    for start in range(0, len(texts), batch_size):
        batch = loaded.tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
            return_tensors="pt",
        )  # fmt: skip
        if encoder is not None:
            hidden = encoder(**batch).last_hidden_state
        else:
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        features.append(mean_pool(hidden, batch["attention_mask"]).float().numpy())
        if advance:
            advance(len(batch["input_ids"]))
    return np.concatenate(features)


def label_suspects(features: np.ndarray, labels: list[str], seed: int = 0, groups: list[str] | None = None) -> dict:
    """Out-of-fold probe accuracy (per group too, given ``groups``), and the rows ranked from
    most to least suspect."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = sorted(set(labels))
    given = np.array([names.index(label) for label in labels])
    folds = min(5, int(np.bincount(given).min()))
    if folds < 2:
        return {"skipped": "every class needs at least two rows for the probe"}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(probe, features, given, cv=splitter, method="predict_proba")
    scores = get_label_quality_scores(given, probabilities)
    order = np.argsort(scores, kind="stable")
    suggested = probabilities.argmax(1)
    found = {
        "probe_accuracy": float((suggested == given).mean()),
        "top_tenth": (order[: -(-len(order) // 10)] + 1).tolist(),  # the most suspect 10%, 1-based
        "suspects": [
            {
                "row": int(i) + 1,
                "given": names[given[i]],
                "suggested": names[suggested[i]],
                "quality": round(float(scores[i]), 4),
            }
            for i in order[:SHOWN_SUSPECTS]
        ],
    }
    if groups is not None:
        from tunelab.evaluate.fairness import group_metrics

        found["groups"] = group_metrics(given, suggested, groups, len(names))
    return found


def zero_shot(features: np.ndarray, labels: list[str], name_features: np.ndarray) -> float:
    """Accuracy of labelling each row with the class whose name embeds closest (cosine), the base
    model's zero-shot read of the task; ``name_features`` holds one row per sorted class."""
    names = sorted(set(labels))
    given = np.array([names.index(label) for label in labels])
    rows = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
    classes = name_features / (np.linalg.norm(name_features, axis=1, keepdims=True) + 1e-12)
    return float(((rows @ classes.T).argmax(1) == given).mean())


def domain_gap(target: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict:
    """How far the target data sits from a reference set in the base model's feature space.

    ``classifier_auc``: out-of-fold ROC-AUC of a logistic probe telling target rows from reference
    rows (0.5: indistinguishable; 1.0: fully apart), a classifier two-sample test.
    ``centroid_cosine_distance``: 1 - cosine of the two mean feature vectors.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([target, reference])
    is_target = np.concatenate([np.ones(len(target)), np.zeros(len(reference))])
    folds = min(5, len(target), len(reference))
    if folds < 2:
        return {"skipped": "the target and the reference need at least two rows each"}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(probe, features, is_target, cv=splitter, method="predict_proba")[:, 1]
    a, b = target.mean(0), reference.mean(0)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return {
        "classifier_auc": float(roc_auc_score(is_target, scores)),
        "centroid_cosine_distance": 1.0 - cosine,
        "rows": [len(target), len(reference)],
    }
