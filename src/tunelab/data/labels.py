"""Map the labels a user wrote (strings or numbers) to class ids, and back."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import UserError


@dataclass(frozen=True)
class LabelMap:
    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: list[str]) -> LabelMap:
        unique = set(labels)
        if len(unique) < 2:
            raise UserError(f"data.train: needs at least two classes, found {sorted(unique)}")
        # Numeric labels sort as numbers so "10" follows "9" and ids keep the user's order.
        numeric = all(_is_int(label) for label in unique)
        return cls(tuple(sorted(unique, key=int if numeric else str)))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def __len__(self) -> int:
        return len(self.names)

    def to_meta(self) -> dict:
        """What ``tunelab.json`` records beside the label names: nothing more for classes."""
        return {}

    def encode(self, labels: list[str], where: str) -> list[int]:
        """Class ids; ``where`` names what the user gave (``data.test``, ``--data``)."""
        lookup = self.label2id
        for row, label in enumerate(labels):
            if label not in lookup:
                known = ", ".join(self.names[:20])
                raise UserError(
                    f"{where}: label '{label}' (data row {row + 1}) never appears in train; train labels are: {known}"
                )
        return [lookup[label] for label in labels]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
