"""What the benchmark scripts share: Fashion-MNIST from Debian's package, image trees, memory."""

from __future__ import annotations

import gzip
import resource
from pathlib import Path

import numpy as np
from PIL import Image

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
    """(images N x 28 x 28 uint8, labels N) of Fashion-MNIST; ``apt-get install dataset-fashion-mnist``."""
    prefix = "t10k" if split == "test" else "train"
    images_file = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_file.exists():
        raise SystemExit(f"{images_file} is missing; run: apt-get install dataset-fashion-mnist")
    return read_idx(images_file), read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")


def write_image_tree(root: Path, images: np.ndarray, labels: np.ndarray, *, size: tuple[int, int] | None = None, fmt: str = "png") -> Path:
    """One folder per class; ``size`` upsamples each image (e.g. to a 640x480 'photo'). Existing files are kept."""
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        target = root / FASHION_CLASSES[int(label)] / f"{index:05d}.{fmt}"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels).convert("RGB")
        if size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        image.save(target, quality=90) if fmt == "jpg" else image.save(target)
    return root


def peak_memory_gb() -> float:
    """Peak resident memory of this process and its finished children, in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2
