"""A text classifier that pools the encoder's tokens the way the model was trained to.

Sentence-transformers models (all-MiniLM-L6-v2 among them) are trained to be read by averaging
their token vectors, as their ``1_Pooling/config.json`` says; transformers'
``...ForSequenceClassification`` classes read the first token through a pooler instead, which
such a model never trained. ``model.pooling: auto`` follows the model's own pooling config;
``mean`` and ``cls`` force one; ``head`` keeps transformers' own head.

Saved in the sentence-transformers layout (``tunelab.models.sentence_layout``): the encoder in
Hugging Face format, its pooling, and the head as a Dense module, so ``SentenceTransformer(folder)``
gives the logits; the pooling is recorded in ``tunelab.json`` too. Folders saved before kept the
head in ``classifier.safetensors``, which still loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunelab.io import read_json_object

CLASSIFIER_WEIGHTS = "classifier.safetensors"  # the head of pooled folders saved before the sentence layout
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


class PooledClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.config = encoder.config  # the encoder's settings (dropout rates, model type) for the rest of tunelab
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids=None, attention_mask=None, **inputs) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = mean_pool(hidden, attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        return self.classifier(self.dropout(pooled))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's token vectors over its real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def declared_pooling(folder: Path) -> str | None:
    """The pooling a folder declares: tunelab's own record, or a sentence-transformers config."""
    meta = folder / "tunelab.json"
    if meta.exists():
        return read_json_object(meta).get("pooling")
    pooling_config = folder / "1_Pooling" / "config.json"
    if not pooling_config.exists():
        return None
    settings = read_json_object(pooling_config)
    return next((mode for key, mode in POOLING_MODES.items() if settings.get(key)), None)


def build_pooled(folder: Path, num_labels: int, pooling: str, trust_remote_code: bool, extra: dict) -> PooledClassifier:
    """The encoder without transformers' pooler (unused weights would stall DDP), and a new head."""
    from transformers import AutoModel

    try:
        encoder = AutoModel.from_pretrained(
            folder, add_pooling_layer=False, trust_remote_code=trust_remote_code, **extra
        )
    except TypeError:  # an architecture without that option
        encoder = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    dropout = getattr(encoder.config, "classifier_dropout", None) or getattr(encoder.config, "hidden_dropout_prob", 0.1)
    return PooledClassifier(encoder, num_labels, pooling, dropout)


def save_pooled(model: PooledClassifier, staging: Path, max_length: int) -> None:
    from tunelab.models.sentence_layout import write_sentence_layout

    model.encoder.save_pretrained(staging, safe_serialization=True)
    write_sentence_layout(staging, model.classifier.state_dict(), model.pooling, max_length)


def saved_classifier(folder: Path, where: str) -> dict[str, torch.Tensor] | None:
    """The head a pooled folder tunelab saved holds (``weight``, ``bias``), or None if it holds none."""
    from tunelab.io import read_safetensors
    from tunelab.models.sentence_layout import read_classifier

    found = read_classifier(folder, where)
    if found is None and (Path(folder) / CLASSIFIER_WEIGHTS).exists():
        found = read_safetensors(Path(folder) / CLASSIFIER_WEIGHTS, where)
    return found
