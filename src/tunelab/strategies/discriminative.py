"""Discriminative fine-tuning: every parameter trains, at a rate that shrinks from the head down.

Lower blocks hold general features that need little change; the head is new and needs a lot
(Howard and Ruder, ULMFiT, 2018). Block ``i`` of ``n`` trains at ``lr * decay ** (n - i)``,
the embeddings at ``lr * decay ** (n + 1)``. The same options (``layer_lr_decay``, ``head_lr``,
``lr_groups``) also combine with ``full``, ``partial`` and ``progressive``.
"""

from tunelab.strategies.full import FullStrategy


class DiscriminativeStrategy(FullStrategy):
    name = "discriminative"
    rate_factor = 2.0
    default_layer_lr_decay = 0.8
