"""Ink on plain paper: drawings, glyphs and cut-outs whose colour and polarity say nothing of what they show.

A scan of a digit, a sketch or a garment on a plain background is two colours
and the blends between them: its pixels lie on one line in RGB space, from the
paper's colour to the ink's. Where a collection mixes inks and papers (light on
dark, dark on light, any hue), an ImageNet network sees that first, and
clustering groups the pictures by it: scikit-learn's digits, each drawn in its
own random ink on its own random paper, reached ACC 0.781 with the default
command against 0.958 in grey. Turning each such picture into the same form,
dark grey ink on white paper (its pixels projected on their line, the paper at
255 and the ink's far end at 0), for the network and for HOG alike, brought them
to 0.957 / NMI 0.928, and Fashion-MNIST so coloured from 0.729 / 0.671 to
0.773 / 0.715. Dark on white is how an ImageNet network has seen writing and
drawings: turned light on black, the coloured digits did worse (docs/QUALITY.md).

It is wrong for photographs, whose colour usually is what tells them apart
(crops of ten photos lost 0.024 NMI where the few crops of plain sky or of a
logo on white were so turned), so the decision is the collection's:
:func:`collection_wants_ink` asks for it only where nearly every picture is
ink on paper and the papers differ. Each picture is then turned on its
own reading (:func:`read_ink`), and one that is not ink on paper is left as it is.
Where every paper is alike (grey digits on black, or drawn dark on white as
scikit-learn shows them), nothing needs making alike, and the pictures are left
as the network knows them best.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# What ink on paper is turned into; records name it, so vectors of another form are never reused.
INK_FORM = "dark grey on white"
# About this many pixels a side are read: enough for a 9-pixel border on a 224-pixel input.
READ_SIDE = 64
# The outer band taken as the paper, as a share of the shorter side.
BORDER_SHARE = 0.04
# Pixels within this RGB distance (channels 0-1) of the paper's colour count as paper.
PAPER_TOLERANCE = 0.06
# Ink on paper: at least half the border and a quarter of the picture are paper ...
PLAIN_BORDER = 0.5
PAPER_SHARE = 0.25
# ... and at most this share of the colour variance lies off the line from paper to ink (measured:
# under 0.001 for the coloured digits and Fashion-MNIST, 0.06 at the median of the photo crops).
OFF_LINE = 0.01
# The collection's rule (measured on 256 pictures): nearly all ink on paper, and the papers differ, at
# least this share of them this far (RGB distance) from the collection's median paper. Grey digits and
# Fashion-MNIST are all ink on one black paper; of the photo crops 5% are ink on paper.
COLLECTION_INK_SHARE = 0.8
PAPERS_APART = 0.25
COLLECTION_PAPERS_APART_SHARE = 0.1
# The ink's far end: this percentile of the projection becomes black, so a speck does not set the scale.
INK_PERCENTILE = 99.5


@dataclass(frozen=True)
class InkReading:
    """A picture read as ink on paper: the paper's RGB (0-1), the unit direction from it to the ink, and how
    far along it the ink reaches (``INK_PERCENTILE`` of the pixels read)."""

    paper: np.ndarray
    direction: np.ndarray
    reach: float


def border_pixels(pixels: np.ndarray) -> np.ndarray:
    """The picture's outer band (``BORDER_SHARE`` of its shorter side), one row per pixel: where its paper shows."""
    band = max(1, round(min(pixels.shape[0], pixels.shape[1]) * BORDER_SHARE))
    edges = (pixels[:band], pixels[-band:], pixels[:, :band], pixels[:, -band:])
    return np.concatenate([edge.reshape(-1, pixels.shape[2]) for edge in edges])


def read_ink(pixels: np.ndarray) -> InkReading | None:
    """The picture (H x W x 3 uint8) as ink on plain paper; None when it is not one."""
    step = max(1, min(pixels.shape[0], pixels.shape[1]) // READ_SIDE)
    sampled = pixels[::step, ::step].astype(np.float32) / 255.0
    border = border_pixels(sampled)
    paper = np.median(border, axis=0)
    if np.mean(np.linalg.norm(border - paper, axis=1) < PAPER_TOLERANCE) < PLAIN_BORDER:
        return None
    flat = sampled.reshape(-1, 3)
    if np.mean(np.linalg.norm(flat - paper, axis=1) < PAPER_TOLERANCE) < PAPER_SHARE:
        return None
    centred = flat - flat.mean(axis=0)
    variances, axes = np.linalg.eigh(centred.T @ centred)
    if variances[-1] <= 0 or variances[:2].sum() > OFF_LINE * variances.sum():
        return None
    direction = axes[:, -1]
    # The ink lies on the side of the paper where the picture reaches farthest.
    along = (flat - paper) @ direction
    if -along.min() > along.max():
        direction, along = -direction, -along
    return InkReading(paper, direction, float(np.percentile(along, INK_PERCENTILE)))


def normalise_ink(pixels: np.ndarray) -> np.ndarray:
    """The picture as dark grey ink (0) on white paper (255) where it is ink on plain paper, else unchanged."""
    reading = read_ink(pixels)
    if reading is None or reading.reach <= 0:
        return pixels
    # 255 - 255 * ((pixel / 255 - paper) . direction) / reach, as one product over the uint8 pixels.
    scale = reading.direction / reading.reach
    offset = 255.0 * (1.0 + float(reading.paper @ scale))
    grey = offset - pixels.reshape(-1, 3).astype(np.float32) @ scale.astype(np.float32)
    grey = np.clip(grey, 0, 255).round().astype(np.uint8).reshape(pixels.shape[:2])
    return np.repeat(grey[..., None], 3, axis=2)


def collection_wants_ink(pictures: Iterable[np.ndarray]) -> tuple[bool, int, int, int]:
    """Whether the pictures, a sample of a collection, should be turned to dark grey ink on white paper.

    Returns the decision and its counts: pictures read, ink on paper, and of those on a paper apart
    from the collection's.
    """
    readings = [read_ink(pixels) for pixels in pictures]
    papers = np.array([reading.paper for reading in readings if reading is not None]).reshape(-1, 3)
    apart = 0
    if len(papers):
        apart = int(np.sum(np.linalg.norm(papers - np.median(papers, axis=0), axis=1) > PAPERS_APART))
    read, ink = len(readings), len(papers)
    wanted = collection_is_ink(read, ink) and apart >= COLLECTION_PAPERS_APART_SHARE * read
    return wanted, read, ink, apart


def collection_is_ink(read: int, ink: int) -> bool:
    """Whether a sample of ``read`` pictures, ``ink`` of them ink on paper, is of a collection of ink on paper."""
    return read > 0 and ink >= COLLECTION_INK_SHARE * read
