"""What the pixels of a decoded picture say about its quality, measured in the decode workers.

Each picture gets a few numbers (:data:`IMAGE_STATS`) while it is in memory
for the network anyway, so judging quality costs no second decode; they are
stored next to its vector. Judging them happens later, against the picture's
cluster and the collection (:mod:`pixclust.curation.flags`): a number here
means nothing on its own.

Pictures are measured at a comparable scale: each is box-reduced by the whole
factor that brings its shorter side nearest :data:`MEASURE_SIDE` (cheap, and
JPEGs arrive draft-decoded near twice that already), so sharpness compares a
4,000-pixel photo and a 500-pixel one at about the same sampling. At 128
pixels blur that shows at screen size is caught, and a photo costs 0.4 ms
(measured on 320 x 240 pictures; at 256 pixels it cost 1.3 ms, a fifth of
embedding the same JPEG in one process, against a budget of a tenth).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageFilter

# The order of the numbers measure() returns and of the store's columns.
IMAGE_STATS = (
    "luminance_mean",  # mean luminance, 0 (black) to 1 (white)
    "luminance_low",  # 1st percentile of luminance: high when even the darkest parts are bright
    "luminance_high",  # 99th percentile: low when even the brightest parts are dark
    "highlights",  # share of pixels whose luminance is clipped white (250 of 255 or more)
    "shadows",  # share of pixels whose luminance is clipped black (5 of 255 or less)
    "contrast",  # standard deviation of luminance, 0 to 0.5
    "entropy",  # Shannon entropy of the 256-level luminance histogram, 0 to 8 bits
    "sharpness",  # variance of the Laplacian over the variance of luminance (scale-free detail); NaN under 3 x 3
    "colourfulness",  # 99th percentile of max(R, G, B) - min(R, G, B), 0 to 1: about 0 for a grey picture
)

MEASURE_SIDE = 128
# Colour needs no detail: it is measured on a picture this small.
_COLOUR_SIDE = 64

# The 4-neighbour Laplacian, offset to mid-grey so Pillow's 8-bit result keeps both signs.
_LAPLACIAN = ImageFilter.Kernel((3, 3), (0, 1, 0, 1, -4, 1, 0, 1, 0), scale=1, offset=128)
_LEVELS = np.arange(256, dtype=np.float64)
_CLIPPED_WHITE = 250
_CLIPPED_BLACK = 5


def measure(image: Image.Image) -> np.ndarray:
    """The :data:`IMAGE_STATS` of an RGB Pillow image, as float32.

    Everything is read off 256-level histograms that Pillow counts in C (of
    luminance, of its Laplacian, and of chroma on a 64-pixel copy): the same
    sums in NumPy took ten times as long.
    """
    image = _reduced(image, MEASURE_SIDE)
    grey = image.convert("L")
    share = _shares(grey.histogram())
    mean = float(share @ _LEVELS)
    variance = float(share @ (_LEVELS - mean) ** 2)
    cumulative = np.cumsum(share)
    nonzero = share[share > 0]
    detail = _laplacian_variance(grey)
    red, green, blue = _reduced(image, _COLOUR_SIDE).split()
    chroma = ImageChops.subtract(
        ImageChops.lighter(ImageChops.lighter(red, green), blue), ImageChops.darker(ImageChops.darker(red, green), blue)
    )
    return np.array(
        [
            mean / 255,
            float(np.searchsorted(cumulative, 0.01)) / 255,
            float(np.searchsorted(cumulative, 0.99)) / 255,
            float(share[_CLIPPED_WHITE:].sum()),
            float(share[: _CLIPPED_BLACK + 1].sum()),
            variance**0.5 / 255,
            float(-(nonzero * np.log2(nonzero)).sum()),
            # A picture of one tone has no detail (0), one under 3 x 3 no measure of it (NaN stays NaN).
            detail / variance if variance > 0 else detail * 0.0,
            float(np.searchsorted(np.cumsum(_shares(chroma.histogram())), 0.99)) / 255,
        ],
        dtype=np.float32,
    )


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """The picture box-reduced by the whole factor that brings its shorter side nearest ``side`` (never below 1)."""
    factor = round(min(image.size) / side)
    return image.reduce(factor) if factor > 1 else image


def _shares(histogram: list[int]) -> np.ndarray:
    counts = np.asarray(histogram, dtype=np.float64)
    return counts / counts.sum()


def _laplacian_variance(grey: Image.Image) -> float:
    """Variance of the Laplacian of the grey picture (NaN under 3 x 3, where it has no interior)."""
    if min(grey.size) < 3:
        return float("nan")
    interior = grey.filter(_LAPLACIAN).crop((1, 1, grey.width - 1, grey.height - 1))
    share = _shares(interior.histogram())
    mean = float(share @ _LEVELS)
    return float(share @ (_LEVELS - mean) ** 2)


def unmeasured(n: int) -> np.ndarray:
    """Stats for ``n`` rows that were never measured (precomputed vectors): NaN, which no flag reads as bad."""
    return np.full((n, len(IMAGE_STATS)), np.nan, dtype=np.float32)
