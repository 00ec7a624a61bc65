"""The built-in demo: scikit-learn's handwritten digits as PNG files, clustered with scores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.runs.truth import TRUTH_FOLDERS

if TYPE_CHECKING:
    from pixclust.runs.pipeline import RunResult

DIGITS_DIR = "digits"
RUN_DIR = "run"


def write_digits(folder: str | Path, *, limit: int | None = None) -> Path:
    """Write the 1,797 8x8 digits as greyscale PNGs in one folder per class (0..9).

    Files already there are kept, so a second demo run reuses them and their
    embeddings. ``limit`` keeps the first N images (for quick tests).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(folder)
    images = digits.images[:limit] if limit else digits.images
    for index, (pixels, label) in enumerate(zip(images, digits.target, strict=False)):
        target = root / str(label) / f"digit_{index:04d}.png"
        if target.exists():
            continue
        # load_digits stores ink as 0..16; draw it dark on white, as scikit-learn's gallery shows it
        # (and as an ImageNet network has seen writing): the default model clusters them better so.
        grey = (255 - np.clip(pixels * (255.0 / 16.0), 0, 255)).astype(np.uint8)
        with atomic_path(target) as tmp:
            Image.fromarray(grey).save(tmp, format="PNG")
    return root


DEMO_K = 10


def run_demo(out: str | Path, *, k: int | str = DEMO_K, quiet: bool = False, limit: int | None = None) -> RunResult:
    """Write the digits under ``out/digits`` and cluster them into ``out/run``, scored against their classes.

    ``k`` defaults to the ten classes the data set has; ``"auto"`` shows pixclust's own choice.
    """
    # The pipeline loads the clustering and report stack; the CLI's help only needs DEMO_K.
    from pixclust.runs.pipeline import RunConfig, run

    out = Path(out)
    images = write_digits(out / DIGITS_DIR, limit=limit)
    return run(RunConfig(source=str(images), out=str(out / RUN_DIR), k=k, truth=TRUTH_FOLDERS), quiet=quiet)
