"""HOG as scikit-image computes it, for pictures of whole numbers 0-255, by table lookup.

``skimage.feature.hog`` (the seeds' descriptor) spends most of its 1.75 ms on a
128-pixel picture in ``arctan2`` and ``hypot`` at every pixel. A picture of
whole numbers 0-255 (grey levels, or a 0/1 mask) has whole-number gradients
in -255..255, so each pixel's orientation bin and gradient magnitude can be
looked up in a 511 x 511 table made once with scikit-image's own formulas.
That takes 0.21 ms, and gives scikit-image's numbers to float32 rounding: its
cells add in float32, these in float64 (largest difference 4e-7 on
Fashion-MNIST; ``tests/test_hog.py`` holds it to ``skimage.feature.hog`` on
photographs, garments, masks and noise). The HOG view, which runs it twice a
picture beside the outline, took a third of the embedding's time before.
"""

from __future__ import annotations

from functools import cache

import numpy as np

ORIENTATIONS = 9
CELL_SIDE = 16
BLOCK_CELLS = 2
# HOG reads pictures at this side; with the cells and blocks above that makes HOG_DIM numbers.
HOG_SIDE = 128
HOG_DIM = (HOG_SIDE // CELL_SIDE - BLOCK_CELLS + 1) ** 2 * BLOCK_CELLS**2 * ORIENTATIONS
# scikit-image's L2-Hys: unit length, each number clipped at 0.2, unit length again.
HYS_CLIP = 0.2
NORM_EPS = 1e-5
_STEPS = 255


@cache
def gradient_tables() -> tuple[np.ndarray, np.ndarray]:
    """Orientation bin and magnitude of every whole-number gradient, flat, indexed by ``(row + 255) * 511 + (col + 255)``.

    The formulas are scikit-image's (``_hoghistogram.pyx``): the angle is
    ``arctan2(row, col)`` in degrees modulo 180, and a pixel falls in bin ``i``
    where ``180 / 9 * i <= angle < 180 / 9 * (i + 1)``.
    """
    steps = np.arange(-_STEPS, _STEPS + 1, dtype=np.float64)
    rows, cols = np.meshgrid(steps, steps, indexing="ij")
    angles = np.arctan2(rows, cols) * (180 / np.pi) % 180
    edges = 180.0 / ORIENTATIONS * np.arange(1, ORIENTATIONS)
    bins = np.searchsorted(edges, angles.ravel(), side="right").astype(np.int32)
    return bins, np.hypot(cols, rows).ravel()


@cache
def _cell_offsets(side: int) -> np.ndarray:
    """Each pixel's first histogram slot: its cell's number times the orientations, as an int32 picture."""
    cell_of = np.arange(side) // CELL_SIDE
    per_row = side // CELL_SIDE
    return ((cell_of[:, None] * per_row + cell_of[None, :]) * ORIENTATIONS).astype(np.int32)


def hog_descriptor(picture: np.ndarray) -> np.ndarray:
    """HOG of a HOG_SIDE-square uint8 picture: 9 orientations, 16-pixel cells, 2 x 2 blocks, L2-Hys (HOG_DIM float32).

    The same numbers as ``skimage.feature.hog(picture, orientations=9,
    pixels_per_cell=(16, 16), cells_per_block=(2, 2))`` to float32 rounding.
    """
    if picture.dtype != np.uint8 or picture.shape != (HOG_SIDE, HOG_SIDE):
        raise ValueError(f"HOG takes a {HOG_SIDE} x {HOG_SIDE} uint8 picture, not {picture.shape} {picture.dtype}")
    levels = picture.astype(np.int32)
    # Central differences with the outermost rows and columns left at zero, as scikit-image takes them.
    index = np.full(levels.shape, _STEPS * (2 * _STEPS + 1) + _STEPS, dtype=np.int32)
    index[1:-1] += (levels[2:] - levels[:-2]) * (2 * _STEPS + 1)
    index[:, 1:-1] += levels[:, 2:] - levels[:, :-2]
    bins, magnitudes = gradient_tables()
    cells = HOG_SIDE // CELL_SIDE
    histogram = np.bincount(
        (_cell_offsets(HOG_SIDE) + bins[index]).ravel(),
        weights=magnitudes[index].ravel(),
        minlength=cells * cells * ORIENTATIONS,
    ).reshape(cells, cells, ORIENTATIONS)
    last = cells - BLOCK_CELLS + 1
    # Each block's cells in scikit-image's order: row by row within the block, orientations innermost.
    blocks = np.stack(
        [histogram[r : r + last, c : c + last] for r in range(BLOCK_CELLS) for c in range(BLOCK_CELLS)], axis=2
    ).reshape(last, last, -1)
    blocks /= np.sqrt(np.sum(blocks**2, axis=-1, keepdims=True) + NORM_EPS**2)
    np.minimum(blocks, HYS_CLIP, out=blocks)
    blocks /= np.sqrt(np.sum(blocks**2, axis=-1, keepdims=True) + NORM_EPS**2)
    return blocks.ravel().astype(np.float32)
