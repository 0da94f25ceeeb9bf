"""The model card (``README.md``) of a run's ``model/`` folder: what it was tuned from, on what, how
well, and the one snippet that loads it without tunelab.

The Hub's metadata block (``base_model``, ``library_name``, ``pipeline_tag``, tags) opens it, as
``huggingface_hub`` reads it; the rest is written from ``results.json``. It replaces the empty
template PEFT writes beside an adapter.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.io import read_json_object, write_atomic


def load_snippet(folder: Path, max_length: int) -> tuple[str, str]:
    """(library, Python code) that loads this folder without tunelab and gives the probabilities
    ``tunelab predict`` prints (texts cut at the run's ``max_length``, as in training)."""
    folder = Path(folder)
    encode = f"tokenizer(texts, padding=True, truncation=True, max_length={max_length}, return_tensors='pt')"
    if (folder / "modules.json").exists():
        return "sentence-transformers", (
            "from sentence_transformers import SentenceTransformer\n\n"
            "model = SentenceTransformer(FOLDER)\n"
            "probabilities = model.encode(texts, convert_to_tensor=True).softmax(-1)"
            + ("  # base: adapter_config.json" if (folder / "adapter_config.json").exists() else "")
        )
    if (folder / "adapter_config.json").exists():
        return "peft", (
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoConfig, AutoTokenizer\n\n"
            "labels = AutoConfig.from_pretrained(FOLDER).id2label\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(FOLDER, num_labels=len(labels))\n"
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)\n"
            f"probabilities = model(**{encode}).logits.softmax(-1)"
        )
    if (folder / "config.json").exists():
        return "transformers", (
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "model = AutoModelForSequenceClassification.from_pretrained(FOLDER)\n"
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)\n"
            f"probabilities = model(**{encode}).logits.softmax(-1)"
        )
    return "tunelab", "# a plain PyTorch module or a bottleneck adapter: `tunelab predict RUN_DIR --text ...`"


def write_model_card(folder: Path, results: dict, base_name: str | None) -> None:
    preprocessing = read_json_object(Path(folder) / "tunelab.json").get("preprocessing", {})
    library, snippet = load_snippet(folder, preprocessing.get("max_length", 512))
    meta = {
        "base_model": base_name,
        "library_name": library,
        "pipeline_tag": results["task"],
        "tags": ["tunelab", results["strategy"], results["task"]],
    }
    examples = ", ".join(f"{split} {count:,}" for split, count in results["examples"].items())
    parameters = results["parameters"]
    lines = [
        "---",
        yaml.safe_dump({key: value for key, value in meta.items() if value is not None}, sort_keys=False).strip(),
        "---",
        "",
        f"# {results['task']} fine-tuned from {base_name or results['model_source']}",
        "",
        f"- **Strategy**: {results['strategy']} ({parameters['trainable']:,} of {parameters['total']:,} "
        f"parameters trained, {parameters['trainable_percent']:.2f}%)",
        f"- **Labels**: {', '.join(results['labels'])}",
        f"- **Examples**: {examples}",
        f"- **Steps**: {results['steps']} ({results['epochs_completed']} epochs), "
        f"{results['train_seconds']:.0f} s of training",
        "",
        "## Scores (before fine-tuning -> after)",
        "",
        *_score_table(results),
        "",
        "## Loading it without tunelab",
        "",
        "```python",
        f"FOLDER = {str(folder)!r}",
        "texts = ['an example to classify']",
        snippet,
        "```",
        "",
        "Written by tunelab; the run's config.yaml and results.json beside this folder hold every setting.",
        "",
    ]
    write_atomic(Path(folder) / "README.md", "\n".join(lines))


def _score_table(results: dict) -> list[str]:
    splits = list(results["final"])
    first = results["final"][splits[0]] if splits else {}
    from tunelab.tasks import scalar_metrics

    metrics = [name for name in scalar_metrics(first) if first.get(name) is not None]
    rows = ["| split | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for split in splits:
        before, after = results.get("base", {}).get(split, {}), results["final"][split]
        cells = [_change(before.get(name), after.get(name)) for name in metrics]
        rows.append(f"| {split} | " + " | ".join(cells) + " |")
    return rows


def _change(before, after) -> str:
    if not isinstance(after, int | float):
        return ""
    return f"{before:.4f} -> {after:.4f}" if isinstance(before, int | float) else f"{after:.4f}"
