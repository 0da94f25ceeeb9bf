"""CoNLL files (one token a line, whitespace-separated columns, a blank line between sentences,
``-DOCSTART-`` lines skipped) and the tag schemes of named-entity data: IOB1, IOB2 (BIO) and
BIOES, detected from the tags and converted to IOB2, the one scheme used inside.

Written here because the libraries that read CoNLL (``datasets``' scripts, ``seqeval``'s
evaluator) either fetch from a hub or read without checking: a file that mixes schemes or holds
an impossible sequence must be reported with its line, not silently repaired.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import UserError

SCHEMES = ("iob1", "iob2", "bioes")
PREFIXES = {"B", "I", "E", "S"}


def read_conll(
    path: str | Path, where: str, tag_column: int | None = -1
) -> tuple[list[list[str]], list[list[str]], list]:
    """Tokens and tags per sentence, and the file line each sentence starts on. ``tag_column``
    None: the file need hold tokens only (what ``predict`` reads); the tags are then empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: file not found: {path}" if not path.exists() else f"{where}: {path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UserError(f"{where}: {path} is not UTF-8 text (bad byte at offset {error.start})") from None
    sentences, tags, starts = [], [], []
    tokens, labels = [], []
    for number, line in enumerate([*lines, ""], start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if tokens:
                sentences.append(tokens)
                tags.append(labels)
            tokens, labels = [], []
            continue
        needed = 1 if tag_column is None else abs(tag_column) + 1  # the tag is never the token itself
        if len(columns) < needed:
            raise UserError(
                f"{where}: {path} line {number} has {len(columns)} column(s), fewer than the tag column needs; "
                "CoNLL lines are 'token ... tag' (is this a CoNLL file?)"
            )
        if not tokens:
            starts.append(number)
        tokens.append(columns[0])
        if tag_column is not None:
            check_tag(columns[tag_column], where, f"{path} line {number}")
            labels.append(columns[tag_column])
    if not sentences:
        raise UserError(f"{where}: {path} holds no sentences")
    return sentences, tags, starts


def check_tag(tag: str, where: str, place: str) -> None:
    """A tag is O or a B-/I-/E-/S- prefix and a type; ``place`` names where it stands."""
    prefix, _, kind = tag.partition("-")
    if tag != "O" and (prefix not in PREFIXES or not kind):
        raise UserError(f"{where}: {place}: tag '{tag}' is not O or B-/I-/E-/S- followed by a type (such as B-PER)")


def detect_scheme(tags: list[list[str]], where: str) -> str:
    """``bioes`` where E- or S- tags appear; else ``iob1`` where an entity starts with I- (as
    CoNLL-2003 does); else ``iob2``. A file mixing BIOES with IOB1 starts is refused."""
    bioes = any(tag[:2] in ("E-", "S-") for sentence in tags for tag in sentence)
    iob1_start = next((i for i, sentence in enumerate(tags) if _starts_with_inside(sentence)), None)
    if bioes and iob1_start is not None:
        raise UserError(
            f"{where}: sentence {iob1_start + 1} starts an entity with I- while other sentences use E-/S- tags: "
            "the file mixes IOB1 and BIOES; set data.tag_scheme or fix the tags"
        )
    return "bioes" if bioes else "iob1" if iob1_start is not None else "iob2"


def _starts_with_inside(sentence: list[str]) -> bool:
    previous = "O"
    for tag in sentence:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return True
        previous = tag
    return False


def invalid_positions(sentence: list[str], scheme: str) -> list[int]:
    """Positions whose tag cannot follow the tag before it in ``scheme``; for BIOES, also
    ``len(sentence)`` when the sentence ends inside an entity. Empty: the sentence is valid."""
    bad, previous = [], "O"
    for position, tag in enumerate(sentence):
        prefix, kind = tag[:1], tag[2:]
        if scheme == "iob1":
            wrong = prefix in ("E", "S")
        elif scheme == "iob2":
            wrong = prefix in ("E", "S") or (prefix == "I" and previous[2:] != kind)
        else:  # bioes: B/I continue into I/E of the same type; E/S/O end an entity
            inside = previous[:1] in ("B", "I") and previous[2:] == kind
            wrong = prefix in ("I", "E") and not inside or prefix in ("B", "S", "O") and previous[:1] in ("B", "I")
        if wrong:
            bad.append(position)
        previous = tag
    if scheme == "bioes" and previous[:1] in ("B", "I"):
        bad.append(len(sentence))
    return bad


def to_iob2(sentence: list[str], scheme: str, where: str, index: int) -> list[str]:
    """One sentence's tags in IOB2; an impossible sequence for ``scheme`` names the sentence."""
    bad = invalid_positions(sentence, scheme)
    if bad and bad[0] == len(sentence):
        raise UserError(
            f"{where}: sentence {index + 1} ends inside an entity ('{sentence[-1]}' is never closed by E- or S-); "
            "fix the tags or set data.tag_scheme"
        )
    if bad:
        _impossible(where, index, bad[0], sentence[bad[0]], scheme)
    out, previous = [], "O"
    for tag in sentence:
        prefix, kind = tag[:1], tag[2:]
        if scheme == "iob1" and prefix == "I" and previous[2:] != kind:
            out.append(f"B-{kind}")  # IOB1's B- starts an entity wherever it stands, as conlleval reads it
        else:
            out.append({"S": f"B-{kind}", "E": f"I-{kind}"}.get(prefix, tag) if scheme == "bioes" else tag)
        previous = tag
    return out


def _impossible(where: str, index: int, position: int, tag: str, scheme: str) -> None:
    raise UserError(
        f"{where}: sentence {index + 1}, token {position + 1}: '{tag}' cannot follow the tag before it in "
        f"{scheme.upper()}; fix the tags or set data.tag_scheme"
    )


def converted(tags: list[list[str]], where: str, scheme: str | None = None) -> tuple[list[list[str]], str]:
    """Every sentence's tags in IOB2, and the scheme they were in (``scheme``, else detected)."""
    scheme = scheme or detect_scheme(tags, where)
    return [to_iob2(sentence, scheme, where, index) for index, sentence in enumerate(tags)], scheme
