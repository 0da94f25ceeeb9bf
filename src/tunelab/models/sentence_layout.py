"""A pooled classifier in the sentence-transformers layout, so ``SentenceTransformer(folder)`` loads it.

all-MiniLM-L6-v2 and its kind ship as a sentence-transformers folder: the encoder in Hugging Face
format at the root, ``modules.json`` naming the modules, ``1_Pooling/`` saying how tokens are
pooled. A classifier fine-tuned from such a model is saved the same way with one more module,
``2_Dense/``: the classification layer (no activation), so ``model.encode(texts)`` returns the
logits and their softmax is the probabilities ``tunelab predict`` prints. An adapter run (LoRA,
IA3) puts its PEFT adapter for the encoder at the root instead of the encoder's weights, which
sentence-transformers loads onto the base model the adapter config names.

The few JSON files are written here in the format the base model's own files use (read by
sentence-transformers 2 to 6) rather than by building a ``SentenceTransformer`` and saving it:
importing the library and rebuilding the encoder costs about ten seconds a save.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tunelab.io import read_safetensors, write_json

POOLING_DIR = "1_Pooling"
DENSE_DIR = "2_Dense"
DENSE_WEIGHTS = f"{DENSE_DIR}/model.safetensors"
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": DENSE_DIR, "type": "sentence_transformers.models.Dense"},
]


def write_sentence_layout(folder: Path, head: dict[str, torch.Tensor], pooling: str, max_length: int) -> None:
    """Everything but the encoder (or its adapter) and the tokenizer, which are saved beside;
    ``head`` is the classification layer's ``weight`` and ``bias``."""
    folder = Path(folder)
    labels, width = head["weight"].shape
    write_json(folder / "modules.json", MODULES)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    write_json(folder / "config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": None})
    (folder / POOLING_DIR).mkdir(exist_ok=True)
    write_json(
        folder / POOLING_DIR / "config.json",
        {
            "word_embedding_dimension": width,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    (folder / DENSE_DIR).mkdir(exist_ok=True)
    dense = {"in_features": width, "out_features": labels, "bias": True}
    write_json(folder / DENSE_DIR / "config.json", dense | {"activation_function": "torch.nn.modules.linear.Identity"})
    weights = {"linear.weight": head["weight"], "linear.bias": head["bias"]}
    save_file({key: value.detach().cpu().contiguous() for key, value in weights.items()}, str(folder / DENSE_WEIGHTS))


def read_classifier(folder: Path, where: str) -> dict[str, torch.Tensor] | None:
    """The classification layer's ``weight`` and ``bias`` from ``2_Dense``, or None without one."""
    path = Path(folder) / DENSE_WEIGHTS
    if not path.exists():
        return None
    saved = read_safetensors(path, where)
    missing = [name for name in ("linear.weight", "linear.bias") if name not in saved]
    if missing:
        from tunelab.errors import UserError

        raise UserError(f"{where}{path} lacks the classifier's {', '.join(missing)}")
    return {"weight": saved["linear.weight"], "bias": saved["linear.bias"]}
