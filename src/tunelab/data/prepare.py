"""Text clean-up applied the same way to every split, counting what each step changed or removed."""

from __future__ import annotations

import re
import unicodedata

from tunelab.config import PrepareConfig
from tunelab.data.readers import RawSplit


def clean_text(text: str, settings: PrepareConfig) -> str:
    if settings.unicode_normalize:
        text = unicodedata.normalize(settings.unicode_normalize, text)
    if settings.clean_whitespace:
        text = re.sub(r"\s+", " ", text).strip()
    if settings.lowercase:
        text = text.lower()
    return text


def prepared_input(item, settings: PrepareConfig):
    """One text, or one text pair, cleaned."""
    if isinstance(item, tuple):
        return tuple(clean_text(part, settings) for part in item)
    return clean_text(item, settings)


def prepare_split(split: RawSplit, settings: PrepareConfig) -> tuple[RawSplit, dict]:
    """The cleaned split and, per step, how many rows it changed or removed."""

    cleaned = [prepared_input(item, settings) for item in split.inputs]
    record = {"rows_in": len(cleaned), "changed": sum(a != b for a, b in zip(cleaned, split.inputs, strict=True))}
    keep = list(range(len(cleaned)))
    if settings.drop_empty:
        keep = [i for i in keep if _text_of(cleaned[i]).strip()]
        record["empty_dropped"] = len(cleaned) - len(keep)
    if settings.deduplicate:
        seen, unique = set(), []
        for i in keep:
            if cleaned[i] not in seen:
                seen.add(cleaned[i])
                unique.append(i)
        record["duplicates_dropped"] = len(keep) - len(unique)
        keep = unique
    record["rows_out"] = len(keep)
    prepared = RawSplit(split.name, cleaned, split.labels, split.source, split.groups).subset(keep)
    return prepared, record


def _text_of(item) -> str:
    return " ".join(item) if isinstance(item, tuple) else item
