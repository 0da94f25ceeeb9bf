"""The audit of tagged data (token classification): tags and entities per type, the tag scheme and
every transition it forbids, sentences longer than ``max_length``, duplicate sentences (and those
tagged differently in their copies), and validation/test sentences also in train.

Training stops at the first impossible tag sequence; the audit counts them all, so a user fixes a
file in one pass. Entities are counted with seqeval's chunker (conlleval's rules), which reads
IOB1, IOB2 and BIOES as written.
"""

from __future__ import annotations

from collections import Counter

from seqeval.metrics.sequence_labeling import get_entities

from tunelab.config import RunConfig
from tunelab.data.audit import SHOWN, _groups, _histogram, _limited, _near_pairs, imbalance_ratio, normalise
from tunelab.data.conll import detect_scheme, invalid_positions
from tunelab.data.tokens import tagged_sentences
from tunelab.errors import UserError

HEAVY_IMBALANCE = 10.0  # most frequent entity type / rarest


def tag_audit(config: RunConfig, tokenizer=None) -> dict:
    """Every finding for every tagged split of ``config.data``; ``tokenizer`` adds sub-token
    lengths and the sentences ``max_length`` cuts."""
    data = config.data
    paths = {role: getattr(data, role) for role in ("train", "validation", "test") if getattr(data, role)}
    splits = {role: _read(path, role, config) for role, path in paths.items()}
    sentences_in_file = len(splits["train"]["inputs"])
    splits["train"], numbers = _limited(splits["train"], data.max_train_examples, config.seed)
    report = {"task": "token-classification", "splits": {}, "leakage": {}}
    for role, split in splits.items():
        report["splits"][role] = _findings(split, tokenizer, data.max_length)
    if numbers is not None:
        report["splits"]["train"]["sampled"] = {"rows": len(numbers), "of": sentences_in_file}
    for role in ("validation", "test"):
        if role in splits:
            report["leakage"][role] = _leakage(splits["train"], splits[role])
    report["warnings"] = tag_warnings(report)
    return report


def _read(path: str, role: str, config: RunConfig) -> dict:
    """Words, tags as written and where each sentence starts; a file mixing schemes is a finding."""
    where = f"data.{role}"
    words, tags, places = tagged_sentences(path, config.data, where)
    split = {"path": str(path), "inputs": words, "tags": tags, "places": places, "mixed": None}
    if config.data.tag_scheme != "auto":
        split["scheme"] = config.data.tag_scheme
    else:
        try:
            split["scheme"] = detect_scheme(tags, where)
        except UserError as error:
            split["scheme"], split["mixed"] = "mixed", str(error)
    return split


def _findings(split: dict, tokenizer, max_length: int) -> dict:
    words, tags, places = split["inputs"], split["tags"], split["places"]
    entities = Counter(kind for kind, _, _ in get_entities([list(sentence) for sentence in tags]))
    texts = [" ".join(sentence) for sentence in words]
    found = {
        "path": split["path"],
        "rows": len(words),
        "words": sum(len(sentence) for sentence in words),
        "scheme": split["scheme"],
        "tags": dict(Counter(tag for sentence in tags for tag in sentence).most_common()),
        "entities": dict(entities.most_common()),
        "imbalance_ratio": imbalance_ratio(entities),
        "invalid_transitions": _invalid(tags, places, split["scheme"]),
        "exact_duplicates": _placed(_groups(normalise(text) for text in texts), places),
        "conflicting_duplicates": _conflicts(texts, tags, places),
        "near_duplicates": _near_placed(_near_pairs(texts, texts), places, places),
    }
    if split["mixed"]:
        found["mixed_schemes"] = split["mixed"]
    if tokenizer is not None:
        found["tokens"] = _lengths(words, places, tokenizer, max_length)
    return found


def _invalid(tags: list, places: list[str], scheme: str) -> dict:
    """Each tag that cannot follow the one before it: how many, in how many sentences, which
    pairs ("O → I-PER"), and where the first few stand."""
    pairs, examples, sentences, count = Counter(), [], 0, 0
    for index, sentence in enumerate(tags):
        bad = [] if scheme == "mixed" else invalid_positions(sentence, scheme)
        sentences += bool(bad)
        for position in bad:
            count += 1
            ends = position == len(sentence)
            before = sentence[position - 1] if position else "start"
            pair = f"{sentence[-1]} → end" if ends else f"{before} → {sentence[position]}"
            pairs[pair] += 1
            if len(examples) < SHOWN:
                token = "the end" if ends else f"token {position + 1}"
                examples.append({"at": f"sentence {index + 1} ({places[index]}), {token}", "pair": pair})
    return {"count": count, "sentences": sentences, "pairs": dict(pairs.most_common()), "examples": examples}


def _conflicts(texts: list[str], tags: list, places: list[str]) -> dict:
    """Sentences that appear more than once with different tags: the same words labelled two ways."""
    seen: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        seen.setdefault(normalise(text), []).append(index)
    groups = [rows for rows in seen.values() if len({tuple(tags[i]) for i in rows}) > 1]
    return {"groups": len(groups), "examples": [[places[i] for i in rows] for rows in groups[:SHOWN]]}


def _placed(found: dict, places: list[str]) -> dict:
    """Duplicate groups named by where each sentence starts, not by its position."""
    return found | {"examples": [[places[row - 1] for row in group] for group in found["examples"]]}


def _near_placed(found: dict, places: list[str], other_places: list[str]) -> dict:
    return found | {"examples": [[places[a - 1], other_places[b - 1], s] for a, b, s in found["examples"]]}


def _lengths(words: list, places: list[str], tokenizer, max_length: int) -> dict:
    """Sub-token lengths (special tokens included), the sentences over ``max_length`` and the
    words training would lose to the cut."""
    import numpy as np

    lists = [list(sentence) for sentence in words]
    lengths = np.array(tokenizer(lists, is_split_into_words=True, return_length=True, verbose=False)["length"])
    over = np.flatnonzero(lengths > max_length).tolist()
    cut = 0
    if over:
        kept = tokenizer([lists[i] for i in over], is_split_into_words=True, truncation=True, max_length=max_length)
        cut = sum(len(lists[i]) - len({w for w in kept.word_ids(j) if w is not None}) for j, i in enumerate(over))
    return {
        "mean": float(lengths.mean()),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "max_length": max_length,
        "over_max_length": {"count": len(over), "rows": [places[i] for i in over[:SHOWN]]},
        "words_cut": cut,
        "histogram": _histogram(lengths),
    }


def _leakage(train: dict, other: dict) -> dict:
    """Sentences of ``other`` also in train, word for word (case and spacing aside) or nearly."""
    texts = [" ".join(sentence) for sentence in other["inputs"]]
    train_texts = [" ".join(sentence) for sentence in train["inputs"]]
    seen = {normalise(text) for text in train_texts}
    exact = [i for i, text in enumerate(texts) if normalise(text) in seen]
    near = _near_placed(_near_pairs(texts, train_texts, same=False), other["places"], train["places"])
    examples = [other["places"][i] for i in exact[:SHOWN]]
    return {"exact": {"count": len(exact), "rows": examples}, "near": near}


def tag_warnings(report: dict) -> list[str]:
    """What a user must hear before training on tagged data."""
    said = []
    for role, found in report["leakage"].items():
        exact, near = found["exact"]["count"], found["near"]["rows"]
        if exact or near:
            said.append(f"leakage: {exact} {role} sentences also in train exactly, {near} nearly")
    for role, found in report["splits"].items():
        if "mixed_schemes" in found:
            said.append(found["mixed_schemes"])
        invalid = found["invalid_transitions"]
        if invalid["count"]:
            said.append(
                f"{role}: {invalid['count']} tags in {invalid['sentences']} sentences cannot follow the tag before "
                f"them in {found['scheme'].upper()} (first: {invalid['examples'][0]['at']}, "
                f"{invalid['examples'][0]['pair']}); training refuses the file until they are fixed"
            )
        conflicts = found["conflicting_duplicates"]["groups"]
        if conflicts:
            said.append(f"{role}: {conflicts} sentences appear more than once with different tags")
        tokens = found.get("tokens")
        if tokens and tokens["over_max_length"]["count"]:
            said.append(
                f"{role}: {tokens['over_max_length']['count']} sentences are longer than max_length "
                f"({tokens['max_length']} sub-tokens): training loses {tokens['words_cut']} words to the cut "
                "(predict reads long inputs in windows)"
            )
        ratio = found["imbalance_ratio"]
        if ratio is not None and ratio >= HEAVY_IMBALANCE:
            said.append(f"{role}: entity types are imbalanced {ratio:.0f}:1 (most frequent to rarest)")
    return said
