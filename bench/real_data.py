"""Labelled image sets that need no download: scikit-learn's digits and Debian's Fashion-MNIST.

The quality tests and the bench scripts build image folders from
these, so every figure pixclust reports can be reproduced offline.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.errors import UsageError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx (MNIST format) .gz file as a numpy array."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) of Fashion-MNIST's ``"test"`` or ``"train"`` split."""
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise UsageError(f"Fashion-MNIST split {split!r} is not known; use 'test' or 'train'")
    images_file = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_file.exists():
        raise UsageError(f"{images_file} is missing; install it with: apt-get install dataset-fashion-mnist")
    return read_idx(images_file), read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")


def write_image_tree(
    root: Path, images: np.ndarray, labels: np.ndarray, *, size: tuple[int, int] | None = None, fmt: str = "png"
) -> Path:
    """One folder per Fashion-MNIST class; ``size`` upsamples each image (e.g. to a 640x480 'photo').

    Files already there are kept, so a second call reuses them (and a run folder's embeddings of them).
    """
    from PIL import Image

    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        target = root / FASHION_CLASSES[int(label)] / f"{index:05d}.{fmt}"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels).convert("RGB")
        if size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG" if fmt == "jpg" else fmt.upper(), **({"quality": 90} if fmt == "jpg" else {}))
    return root
