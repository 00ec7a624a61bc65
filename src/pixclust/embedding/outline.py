"""The outline of ink on paper: where the picture is not paper, holes filled, as a mask HOG can read.

HOG of a picture answers to its texture as much as to its shape: on
Fashion-MNIST a shirt's buttons and checks put it beside other patterned
garments, and shirts are the class the pipeline misses most (399 of 1,000
went to the coats' cluster). The HOG of the garment's outline alone, where
texture is gone, tells sleeves, collars and hems apart; set beside HOG as a
view of its own, the refinement's neighbours (:mod:`pixclust.clustering.refine`)
lifted Fashion-MNIST's test set from ACC 0.790-0.792 / NMI 0.737-0.739 to
0.797-0.800 / 0.743-0.745 over seeds 0-3, the digits unchanged (docs/QUALITY.md).

Only a picture of ink on plain paper has an outline: the paper is the colour
of its border (as :func:`pixclust.embedding.ink.read_ink` reads it), the ink
every pixel off it. Photographs have none, so the view is made only for a
collection that is ink on paper (:func:`pixclust.embedding.ink_choice.outline_wanted`).
"""

from __future__ import annotations

import numpy as np

from pixclust.embedding.ink import PAPER_TOLERANCE, border_pixels


def outline_mask(pixels: np.ndarray) -> np.ndarray:
    """The picture (H x W x 3 uint8) as 1 where it is ink, holes in the ink filled, 0 where it is paper.

    Holes are filled so that a garment's print or a loop of a digit does not
    draw edges inside the outline.
    """
    from scipy.ndimage import binary_fill_holes

    colours = pixels.astype(np.float32) / 255.0
    paper = np.median(border_pixels(colours), axis=0)
    ink = np.linalg.norm(colours - paper, axis=2) > PAPER_TOLERANCE
    return binary_fill_holes(ink).astype(np.float32)
