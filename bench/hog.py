"""The HOG view's cost: pixclust's HOG and outline against scikit-image's and SciPy's, and the whole view.

    .venv/bin/python bench/hog.py [--n 2000] [--work /tmp/pixclust-bench-hog]

Per picture (Fashion-MNIST test images at HOG's 128 pixels, one process): HOG by
``skimage.feature.hog`` and by ``pixclust.embedding.hog.hog_descriptor``; the
outline by ``scipy.ndimage.binary_fill_holes`` after ``np.linalg.norm``, as
pixclust made it before, and by ``outline_mask``; each pair's largest
difference. Then the whole view a run makes for ink on paper,
``pixclust.embed(FOLDER, model="hog+outline")``, nothing stored, in images a
second (its decode workers included). The machine's load moves figures from hour
to hour: compare within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fashion_mnist, write_image_tree


def _per_picture_ms(function: Callable[[np.ndarray], np.ndarray], pictures: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for picture in pictures:
        function(picture)
    return (time.perf_counter() - started) / len(pictures) * 1e3


def _reference_outline(pixels: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    from pixclust.embedding.ink import PAPER_TOLERANCE, border_pixels

    colours = pixels.astype(np.float32) / 255.0
    paper = np.median(border_pixels(colours), axis=0)
    return binary_fill_holes(np.linalg.norm(colours - paper, axis=2) > PAPER_TOLERANCE).astype(np.uint8)


def _reference_hog(picture: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return hog(picture, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixclust-bench-hog"))
    args = parser.parse_args()

    from PIL import Image

    import pixclust
    from pixclust.embedding.hog import HOG_SIDE, hog_descriptor
    from pixclust.embedding.outline import outline_mask

    images, labels = fashion_mnist("test")
    images, labels = images[: args.n], labels[: args.n]
    side = (HOG_SIDE, HOG_SIDE)
    grey = [np.asarray(Image.fromarray(image).resize(side, Image.Resampling.BILINEAR)) for image in images]
    colour = [np.repeat(picture[..., None], 3, axis=2) for picture in grey]
    masks = [outline_mask(picture) for picture in colour]

    rows = []
    for step, pictures, reference, ours in (
        ("HOG of the grey picture", grey, _reference_hog, hog_descriptor),
        ("the outline", colour, _reference_outline, outline_mask),
        ("HOG of the outline", masks, _reference_hog, hog_descriptor),
    ):
        difference = max(
            float(np.max(np.abs(reference(p).astype(np.float32) - ours(p).astype(np.float32)))) for p in pictures[:200]
        )
        rows.append((step, _per_picture_ms(reference, pictures), _per_picture_ms(ours, pictures), difference))
    print(f"{len(grey)} Fashion-MNIST test pictures at {HOG_SIDE} px, ms a picture, one process\n")
    print("| step | scikit-image / SciPy | pixclust | largest difference (200 pictures) |")
    print("|---|---|---|---|")
    for step, reference_ms, ours_ms, difference in rows:
        print(f"| {step} | {reference_ms:.3f} | {ours_ms:.3f} | {difference:.1e} |")

    folder = write_image_tree(args.work / "images", images, labels)
    started = time.perf_counter()
    view = pixclust.embed(folder, model="hog+outline", save=False, quiet=True)
    seconds = time.perf_counter() - started
    print(
        f"\nthe whole view, pixclust.embed(FOLDER, model='hog+outline'): {len(view.paths)} images in "
        f"{seconds:.1f} s ({len(view.paths) / seconds:.0f} images/s)"
    )


if __name__ == "__main__":
    main()
