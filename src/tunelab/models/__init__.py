"""Models: load from a source (built-in, local folder, minilm, module:function) and save."""

from tunelab.models.loading import LoadedModel, load_model, load_saved_model
from tunelab.models.saving import save_model

__all__ = ["LoadedModel", "load_model", "load_saved_model", "save_model"]
