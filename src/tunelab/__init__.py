"""tunelab: fine-tune pretrained PyTorch models and measure what it bought."""

import time

__version__ = "0.1.0"

# When this process imported tunelab, its first import: what a run's start-up time counts from.
PROCESS_STARTED_AT = time.time()
