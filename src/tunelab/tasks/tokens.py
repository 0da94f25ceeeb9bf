"""Token classification (named-entity recognition, clause identification): a tag per word.

Words come from CoNLL files or JSONL/Parquet rows (``tunelab.data.tokens``), tags are IOB2 inside
whatever scheme the file used, the model is transformers' ``AutoModelForTokenClassification`` and
its loss is cross-entropy over each word's first sub-token (every sub-token with
``data.label_all_subtokens``). Scores are entity-level, as ``conlleval`` counts them
(``tunelab.evaluate.entities``); ``predict`` gives spans with character offsets.
"""

from __future__ import annotations

import torch

from tunelab.tasks.base import Task


class TokenClassification(Task):
    name = "token-classification"
    metrics = ("loss", "precision", "recall", "f1", "token_accuracy")
    default_metric = "f1"
    gap_metrics = ("loss", "f1")
    curve_metrics = ("precision", "recall", "f1")
    table_metrics = ("precision", "recall", "f1", "token_accuracy")
    pooled = False
    class_outputs = True  # a class distribution per token: distillation applies
    all_subtokens: bool = False  # set by ``configured``

    def reads(self, config) -> str:
        return "text"

    def configured(self, config) -> TokenClassification:
        task = TokenClassification()
        task.all_subtokens = config.data.label_all_subtokens
        return task

    def read_split(self, path, role: str, config, where: str | None = None, extra: bool = False):
        from tunelab.data.tokens import token_split

        return token_split(path, role, config.data, where)

    def audit(self, config, tokenizer) -> dict:
        from tunelab.data.tag_audit import tag_audit

        return tag_audit(config, tokenizer)

    def targets(self, labels: list, config):
        from tunelab.data.tokens import TagMap

        return TagMap.from_tags(labels)

    def saved_targets(self, meta: dict):
        from tunelab.data.tokens import TagMap

        return TagMap(tuple(meta["labels"]))

    def text_dataset(self, tokenizer, inputs: list, ids: list, targets, config, fingerprint: str | None):
        from tunelab.data.tokens import aligned

        dataset, cut = aligned(tokenizer, inputs, ids, config.data.max_length, len(targets))
        return dataset, cut, False

    def cut_warning(self, split: str, count: int, rows: int, max_length: int) -> str:
        return (
            f"{split}: {count} words lie past data.max_length ({max_length} sub-tokens) and are neither "
            "learned nor scored; raise data.max_length"
        )

    def collate(self, loaded, config):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(loaded.tokenizer)

    def auto_model(self, config):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        from tunelab.evaluate import IGNORED, per_token

        logits, labels = per_token(logits, labels)
        tags = logits.shape[-1]
        later = labels >= tags  # a word's later sub-tokens (see tunelab.data.tokens)
        labels = torch.where(later, labels - tags if self.all_subtokens else IGNORED, labels)
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, tags), labels.reshape(-1), weight=weights, ignore_index=IGNORED
        )

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, targets, groups: list | None = None) -> dict:
        from tunelab.evaluate import per_token
        from tunelab.evaluate.entities import entity_scores

        logits, labels = per_token(logits, labels)
        words = (labels >= 0) & (labels < len(targets))  # each word's first sub-token
        loss = torch.nn.functional.cross_entropy(logits[words].float(), labels[words]).item()
        predicted = logits.argmax(dim=-1)
        names = targets.names
        truth = [[names[i] for i in row[kept].tolist()] for row, kept in zip(labels, words, strict=True)]
        guess = [[names[i] for i in row[kept].tolist()] for row, kept in zip(predicted, words, strict=True)]
        return {"loss": loss, **entity_scores(truth, guess), "examples": len(truth)}

    def predict_rows(self, config, loaded, texts: list[str] | None, input_path: str | None) -> list[dict]:
        from tunelab.tasks.token_predict import predict_tags

        return predict_tags(config, loaded, texts, input_path)

    def report_sections(self, results: dict) -> list[str]:
        from tunelab.report import plots
        from tunelab.report.html import image
        from tunelab.report.tokens import per_type_html

        sections = []
        for split in ("validation", "test"):
            scores = results["final"].get(split)
            if scores and "per_type" in scores:
                base = results.get("base", {}).get(split, {}).get("per_type")
                sections.append(f"<h2>Entities by type ({split})</h2>" + per_type_html(scores["per_type"], base))
                confusion = scores["entity_confusion"]
                title = f"entity types ({split}): row O spurious, column O missed"
                png = plots.confusion_matrix(confusion["matrix"], confusion["labels"], title)
                sections.append(image(png, f"entity confusion ({split})"))
        return sections

    def summary_lines(self, results: dict) -> list[str]:
        from tunelab.report.tokens import per_type_lines

        gap = results.get("gap", {})
        lines = [f"train - validation entity F1 gap: {gap['f1']:+.4f}"] if "f1" in gap else []
        return [*lines, *per_type_lines(results)]
