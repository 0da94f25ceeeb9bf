"""Catastrophic forgetting: measured on retain sets with the base model's own head, and representation
drift; prevented by EWC, L2-SP, learning without forgetting and replay.

The base model's own head stays attached beside the new one (``heads.HeadTap``): each forward pass
through the fine-tuned model also gives the old task's logits, so the old task is scored, distilled
and replayed on the current weights without a second copy of the model.
"""
