"""Image fingerprints for the audit: each file read once, its bytes hashed (identical copies) and,
when it decodes, its perceptual hash taken (near copies).

A perceptual hash (pHash, the ``imagehash`` package) is 64 bits from the low frequencies of a
32x32 greyscale copy of the image, so re-encoding, resizing and mild changes of light leave it
nearly unchanged. Two images are near copies when their hashes differ in at most
``NEAR_IMAGE_DISTANCE`` bits. Measured on scikit-learn's two sample photos: JPEG at quality 40,
halving the size, a 1-pixel resize and greying change 0 bits; 10% brighter 4, 30% brighter 8;
a 5% border crop 6 (10%: 12, missed). Distinct crops of the same photos stay 20 or more bits
apart and pairs of random-noise images 16 or more, so 8 bits flags the edits above without
confusing distinct images. A mirror image is not a near copy (about 34 bits apart). The hash reads
greyscale shapes only, so images that differ in colour alone (plain fills of two colours, say)
count as near copies.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEAR_IMAGE_DISTANCE = 8  # differing bits of 64; see the module docstring for the measurements
HASH_BITS = 64
# Popcount of every byte value, to count differing bits of hashes held as 8 bytes each.
BITS_SET = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)
BLOCK_CELLS = 1 << 22  # hash comparisons held in memory at once (32 MB of bytes)


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    perceptual: bytes | None  # the 64-bit pHash as 8 bytes; None when the file does not decode

    @property
    def decodes(self) -> bool:
        return self.perceptual is not None


def fingerprint(path: Path) -> Fingerprint:
    """The file's SHA-256 and, if it decodes, its perceptual hash; the file is read once."""
    import imagehash
    from PIL import Image

    content = Path(path).read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            bits = imagehash.phash(image).hash.flatten()
    except Exception:  # PIL raises many types for damaged files; any of them means "cannot decode"
        return Fingerprint(digest, None)
    return Fingerprint(digest, np.packbits(bits).tobytes())


def near_pairs(prints: list[Fingerprint], others: list[Fingerprint] | None = None) -> list[tuple[int, int, float]]:
    """(index in ``prints``, index in ``others``, similarity) for every pair of near copies that
    are not byte-identical, most similar first. Without ``others``, pairs within ``prints``
    (each pair once). Similarity is 1 - differing bits / 64."""
    same = others is None
    others = prints if same else others
    rows = [i for i, p in enumerate(prints) if p.decodes]
    columns = [j for j, p in enumerate(others) if p.decodes]
    pairs = []
    for a, b, distance in _close(_packed(prints, rows), _packed(others, columns)):
        first, second = rows[a], columns[b]
        if (same and first >= second) or prints[first].sha256 == others[second].sha256:
            continue
        pairs.append((first, second, round(1 - distance / HASH_BITS, 3)))
    pairs.sort(key=lambda pair: -pair[2])
    return pairs


def _packed(prints: list[Fingerprint], indices: list[int]) -> np.ndarray:
    return np.frombuffer(b"".join(prints[i].perceptual for i in indices), dtype=np.uint8).reshape(-1, 8)


def _close(hashes: np.ndarray, others: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Every (row, column, distance) with at most NEAR_IMAGE_DISTANCE differing bits, by blocks of
    rows so memory stays bounded however many images there are."""
    if not len(hashes) or not len(others):
        return
    step = max(1, BLOCK_CELLS // len(others))
    for start in range(0, len(hashes), step):
        distances = BITS_SET[hashes[start : start + step, None, :] ^ others[None, :, :]].sum(axis=-1)
        for row, column in zip(*np.nonzero(distances <= NEAR_IMAGE_DISTANCE), strict=True):
            yield start + int(row), int(column), int(distances[row, column])
