"""tunelab: fine-tune pretrained PyTorch models and measure what it bought.

``tunelab.fine_tune(config, **overrides)`` trains and returns the run; ``tunelab.load_run(dir)``
opens a finished one, ready to predict (see :mod:`tunelab.api`).
"""

import time

__version__ = "0.1.0"
__all__ = ["Run", "fine_tune", "load_run"]

# When this process imported tunelab: start-up time counts from process creation, or else from here.
PROCESS_STARTED_AT = time.time()


def __getattr__(name: str):
    # The API pulls in pydantic and the config schema: `import tunelab` alone stays instant.
    if name in __all__:
        from tunelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
