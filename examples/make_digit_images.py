"""Write scikit-learn's digits as an image folder (one sub-folder per class) for the image example.

.venv/bin/python examples/make_digit_images.py [OUTPUT_DIR]   # default runs/digit-images
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main(output: Path) -> None:
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(indices, test_size=0.3, random_state=0, stratify=digits.target)
    for split, chosen in (("train", train), ("test", test)):
        for index in chosen:
            folder = output / split / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(folder / f"{index}.png")
    print(f"wrote {len(train)} training and {len(test)} test images under {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digit-images"))
