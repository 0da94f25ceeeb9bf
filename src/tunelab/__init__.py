"""tunelab: fine-tune pretrained PyTorch models and measure what it bought."""

import time

__version__ = "0.1.0"

# When this process imported tunelab: start-up time counts from process creation, or else from here.
PROCESS_STARTED_AT = time.time()
