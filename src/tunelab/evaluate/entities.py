"""Entity-level scores of tag sequences: precision, recall and F1 over exact spans and types (the
``conlleval`` definition, as ``seqeval`` computes it in its default mode), micro and per type,
token accuracy, and an entity-type confusion matrix with missed and spurious spans."""

from __future__ import annotations

OUTSIDE = "O"  # the confusion matrix's row of spurious spans and column of missed ones


def entity_scores(truth: list[list[str]], predicted: list[list[str]]) -> dict:
    """Scores of predicted IOB2 tag sequences against the true ones (word for word)."""
    from seqeval.metrics import classification_report

    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    kinds = sorted(key for key in report if not key.endswith(" avg"))
    tokens = sum(len(sentence) for sentence in truth)
    right = sum(t == p for gold, guess in zip(truth, predicted, strict=True) for t, p in zip(gold, guess, strict=True))
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "token_accuracy": right / tokens if tokens else None,
        "per_type": {
            kind: {
                "precision": float(report[kind]["precision"]),
                "recall": float(report[kind]["recall"]),
                "f1": float(report[kind]["f1-score"]),
                "support": int(report[kind]["support"]),
            }
            for kind in kinds
        },
        "entity_confusion": entity_confusion(truth, predicted),
    }


def entity_confusion(truth: list[list[str]], predicted: list[list[str]]) -> dict:
    """Which types are taken for which: a true span whose exact boundaries the model also marked
    counts under (true type, predicted type); a true span it did not mark is missed (column O), a
    span it marked where none is true is spurious (row O). A wrong boundary is both."""
    from seqeval.metrics.sequence_labeling import get_entities

    kinds = sorted({kind for sentences in (truth, predicted) for s in sentences for kind, _, _ in get_entities(s)})
    names = [*kinds, OUTSIDE]
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for gold, guess in zip(truth, predicted, strict=True):
        true_spans = {(start, end): kind for kind, start, end in get_entities(gold)}
        guessed = {(start, end): kind for kind, start, end in get_entities(guess)}
        for span, kind in true_spans.items():
            matrix[index[kind]][index[guessed.get(span, OUTSIDE)]] += 1
        for span, kind in guessed.items():
            if span not in true_spans:
                matrix[index[OUTSIDE]][index[kind]] += 1
    return {"labels": names, "matrix": matrix}
