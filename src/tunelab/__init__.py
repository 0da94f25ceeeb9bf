"""tunelab: fine-tune pretrained PyTorch models and measure what it bought."""

__version__ = "0.1.0"
