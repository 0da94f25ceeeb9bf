"""Representation drift: linear CKA between the base model's features and the fine-tuned model's on
the same rows (Kornblith et al., 2019). 1 means the features are the same up to rotation and
scale; lower means fine-tuning moved them. It needs no labels of the old task.

Written here because it is five lines of linear algebra and no maintained library exposes it.
"""

from __future__ import annotations

import torch


def linear_cka(first: torch.Tensor, second: torch.Tensor) -> float:
    """``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` for column-centred ``X`` (n x p) and ``Y`` (n x q),
    computed through the n x n Gram matrices, so wide features (a token grid) cost no more."""
    x = first.double().flatten(1)
    y = second.double().flatten(1)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    gram_x, gram_y = x @ x.T, y @ y.T
    scale = torch.linalg.matrix_norm(gram_x) * torch.linalg.matrix_norm(gram_y)
    return float((gram_x * gram_y).sum() / scale) if scale > 0 else float("nan")
