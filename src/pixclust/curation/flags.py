"""Image-quality flags: which pictures are blurry, dark, overexposed, blank, tiny, oddly shaped or out of place.

Most flags read one measure per image (from the pixel stats the decode
workers took, the image's size, or its distance to its cluster's centre) and
ask how far the image lies from what is usual, in robust units (deviations
from the median in MADs scaled to a normal's sigma), against two references:
the image's own cluster and the whole collection. The score is
min(z in the cluster, 2 x z in the collection): a dark copy among a
cluster of bright look-alikes stands far out even where a varied collection
spreads wide, while an image that is usual for its cluster (a cluster of
night photos, of thumbnails, of white-background shots) is not flagged for
what the whole cluster is. A cluster too small to say what is usual defers to
the collection; so does a cluster whose median member is itself past the
threshold for a measure that reads only defects (blur, darkness of even the
brightest parts, size): blurred shots look alike to a network and cluster
together, and such a cluster is a pile of defects, not a theme. Each measure's
spread has a floor (the smallest difference worth a flag), so a clean,
uniform collection, where the MAD is tiny, raises few flags.

Some judgements are fixed, since no company makes them normal: a picture
with almost no contrast is uniform (and not blurry or low-information: it has
no detail to lose); one without colour is grayscale when the collection and
its cluster are mostly in colour; a dark picture is also dark in itself
(nothing in it brighter than a quarter of white); and a dark or overexposed
picture is not also "low information" for the levels its exposure lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pixclust.embedding.pixel_stats import IMAGE_STATS
from pixclust.errors import UsageError

FLAG_NAMES = (
    "blurry",
    "dark",
    "overexposed",
    "low-information",
    "uniform",
    "tiny",
    "odd-aspect",
    "grayscale",
    "outlier",
)

# Robust z from which an image is flagged: the modified z-score's usual outlier bar (Iglewicz and Hoaglin).
DEFAULT_FLAG_THRESHOLD = 3.5

# A cluster serves as a reference once it has this many measured members, and this share of the collection.
_MIN_REFERENCE = 20
_MIN_REFERENCE_SHARE = 0.03

_MAD_TO_SIGMA = 1.4826

# A picture whose luminance varies by less than this (standard deviation, 0 to 0.5) shows nothing.
_UNIFORM_CONTRAST = 3 / 255
# Dark is also dark in itself: nothing in the picture brighter than this (99th percentile of luminance). Unusual
# darkness alone also caught black garments on black with mid-grey highlights, which a person calls well exposed.
_DARK_AT_MOST = 0.25
# A picture whose 99th-percentile chroma is below this is grey; a collection whose median is above the second is in colour.
_GREY_CHROMA = 0.03
_COLOUR_CHROMA = 0.12

_CERTAIN = 10.0
_MOST_UNUSUAL = 1000.0

_IMPLIED_BY_UNIFORM = ("blurry", "low-information")

_STAT = {name: column for column, name in enumerate(IMAGE_STATS)}


@dataclass(frozen=True)
class _Measure:
    """How bad an image is for one flag (larger is worse).

    ``matters``: the smallest difference worth a flag, in the measure's units;
    the spread is floored at ``matters / DEFAULT_FLAG_THRESHOLD`` (0: a tenth
    of the measure's median, for distances, which have no units of their own).
    ``defect_only``: the measure cannot describe a subject, so a cluster whose
    median member is past the threshold is a pile of defects and not a reference.
    """

    badness: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    matters: float
    defect_only: bool


def _log10(values: np.ndarray, smallest: float) -> np.ndarray:
    return np.log10(np.maximum(values, smallest))


def _stat(name: str) -> Callable[[np.ndarray], np.ndarray]:
    column = _STAT[name]
    return lambda stats: stats[:, column].astype(np.float64)


_sharpness, _high, _highlights, _shadows, _contrast, _entropy, _colour = (
    _stat(name)
    for name in ("sharpness", "luminance_high", "highlights", "shadows", "contrast", "entropy", "colourfulness")
)


def _logit(share: np.ndarray) -> np.ndarray:
    clipped = np.clip(share, 1e-3, 1 - 1e-3)
    return np.log(clipped / (1 - clipped))


def _sides(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shorter and longer side of each image, NaN where the size is unknown."""
    known = sizes.min(axis=1) > 0
    return (
        np.where(known, sizes.min(axis=1), np.nan).astype(np.float64),
        np.where(known, sizes.max(axis=1), np.nan).astype(np.float64),
    )


def _aspect(sizes: np.ndarray) -> np.ndarray:
    shorter, longer = _sides(sizes)
    return np.log2(longer / shorter)


_MEASURES: dict[str, _Measure] = {
    # Detail relative to contrast falls by decades when a picture is blurred; half a decade matters.
    "blurry": _Measure(lambda stats, sizes, distances: -_log10(_sharpness(stats), 1e-5), 0.5, True),
    # Even the brightest parts are dark (99th percentile of luminance; a night photo has its lights).
    "dark": _Measure(lambda stats, sizes, distances: -_high(stats), 0.2, True),
    # Clipped white and no clipped black, in log-odds (from 5% to 50% white is 3): a white background
    # with dark print is a subject, a picture washed out from end to end is not.
    "overexposed": _Measure(
        lambda stats, sizes, distances: _logit(_highlights(stats)) - _logit(_shadows(stats)), 3.0, False
    ),
    # Bits of the luminance histogram; simple graphics are a subject.
    "low-information": _Measure(lambda stats, sizes, distances: -_entropy(stats), 1.5, False),
    # Small on both sides: the longer side, where halving it matters (log2); a long strip is odd-aspect, not tiny.
    "tiny": _Measure(lambda stats, sizes, distances: -np.log2(_sides(sizes)[1]), 0.5, True),
    "odd-aspect": _Measure(lambda stats, sizes, distances: _aspect(sizes), 1.0, True),
    "outlier": _Measure(lambda stats, sizes, distances: distances.astype(np.float64), 0.0, False),
}


@dataclass(frozen=True)
class QualityFlags:
    """The flags of every image, as plain data.

    ``flags[i]`` are image ``i``'s flag names (in :data:`FLAG_NAMES` order,
    empty when clean); ``scores`` is N x len(:data:`FLAG_NAMES`): how unusual
    the image is for each flag, in robust z against both references (the
    smaller of the two; NaN where not measured), so the worst come first when
    sorted by ``severity``; ``threshold`` is the score from which a flag is raised.
    """

    flags: list[tuple[str, ...]]
    scores: np.ndarray
    threshold: float

    @property
    def severity(self) -> np.ndarray:
        """Each image's highest score among its raised flags, 0 where it has none."""
        raised = np.array([[name in image for name in FLAG_NAMES] for image in self.flags], dtype=bool).reshape(
            -1, len(FLAG_NAMES)
        )
        return np.where(raised, np.nan_to_num(self.scores, nan=0.0), 0.0).max(axis=1, initial=0.0)

    def counts(self) -> dict[str, int]:
        """How many images carry each flag (flags no image carries left out)."""
        counted = {name: sum(name in image for image in self.flags) for name in FLAG_NAMES}
        return {name: count for name, count in counted.items() if count}

    @property
    def n_flagged(self) -> int:
        return sum(1 for image in self.flags if image)

    def cells(self) -> list[tuple[str, str]]:
        """clusters.csv's ``flags`` and ``flag_score`` cells: the flags joined with ``;``, and the severity (empty when clean)."""
        return [
            (";".join(image), f"{score:.2f}" if image else "")
            for image, score in zip(self.flags, self.severity, strict=True)
        ]


def checked_flag_threshold(threshold: object, said: str) -> float:
    """``threshold`` as a float, or a one-line error that begins with ``said`` (the setting in the caller's words)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < float("inf"):
        raise UsageError(
            f"{said} must be a positive number (default {DEFAULT_FLAG_THRESHOLD:g}; higher raises fewer flags)"
        )
    return float(threshold)


def flag_images(
    image_stats: np.ndarray,
    image_sizes: np.ndarray,
    labels: np.ndarray,
    distances: np.ndarray | None = None,
    *,
    threshold: float = DEFAULT_FLAG_THRESHOLD,
) -> QualityFlags:
    """Flag each image against the collection and its cluster (``labels``; -1 has no cluster).

    ``image_stats`` are the pixel stats (N x len(IMAGE_STATS); NaN rows are
    never flagged for what they lack), ``image_sizes`` the (width, height)
    (0 where unknown), ``distances`` each image's distance to its cluster's
    centre (None: no outlier flag).
    """
    threshold = checked_flag_threshold(threshold, f"threshold={threshold!r}")
    n = len(labels)
    stats = np.asarray(image_stats, dtype=np.float64).reshape(n, len(IMAGE_STATS))
    sizes = np.asarray(image_sizes).reshape(n, 2)
    labels = np.asarray(labels)
    far = np.full(n, np.nan) if distances is None else np.asarray(distances, dtype=np.float64)
    scores = np.full((n, len(FLAG_NAMES)), np.nan)
    for name, measure in _MEASURES.items():
        badness = measure.badness(stats, sizes, far)
        floor = measure.matters / DEFAULT_FLAG_THRESHOLD if measure.matters else _scale_floor(badness)
        scores[:, FLAG_NAMES.index(name)] = _robust_scores(badness, labels, floor, threshold, measure.defect_only)
    # An infinite measure (a store crafted or broken by hand) is as unusual as anything gets, not a number to print.
    np.clip(scores, -_MOST_UNUSUAL, _MOST_UNUSUAL, out=scores)
    raised = scores >= threshold
    column = {name: index for index, name in enumerate(FLAG_NAMES)}
    raised[:, column["dark"]] &= _high(stats) <= _DARK_AT_MOST
    exposed = raised[:, column["dark"]] | raised[:, column["overexposed"]]
    raised[exposed, column["low-information"]] = False
    uniform = _contrast(stats) <= _UNIFORM_CONTRAST
    raised[np.ix_(uniform, [column[name] for name in _IMPLIED_BY_UNIFORM])] = False
    raised[:, column["uniform"]] = uniform
    # Certain, whatever the rest of the collection: sorted among the worst.
    scores[:, column["uniform"]] = np.where(uniform, _CERTAIN * threshold, np.nan)
    grey = _grey_among_colour(_colour(stats), labels)
    raised[:, FLAG_NAMES.index("grayscale")] = grey
    scores[grey, FLAG_NAMES.index("grayscale")] = threshold
    flags = [tuple(name for name, up in zip(FLAG_NAMES, row, strict=True) if up) for row in raised]
    return QualityFlags(flags=flags, scores=scores, threshold=threshold)


def _scale_floor(badness: np.ndarray) -> float:
    """For a measure without units of its own (distances): a tenth of its median matters."""
    finite = badness[np.isfinite(badness)]
    return 0.1 * float(np.median(finite)) / DEFAULT_FLAG_THRESHOLD if finite.size else 1.0


def _robust_scores(
    badness: np.ndarray, labels: np.ndarray, floor: float, threshold: float, defect_only: bool
) -> np.ndarray:
    """min(z in the image's cluster, 2 x z in the collection), or z in the collection where the cluster is no reference.

    NaN where unmeasured; see the module's docstring for when a cluster is a reference.
    """
    measured = np.isfinite(badness)
    against_all = _robust_z(badness, measured, floor)
    scores = against_all.copy()
    smallest = max(_MIN_REFERENCE, _MIN_REFERENCE_SHARE * np.count_nonzero(measured))
    for label in np.unique(labels):
        members = labels == label
        reference = members & measured
        if label < 0 or np.count_nonzero(reference) < smallest:
            continue
        if defect_only and np.median(against_all[reference]) >= threshold:
            continue
        scores[members] = np.minimum(_robust_z(badness, reference, floor)[members], 2 * against_all[members])
    return scores


def _robust_z(badness: np.ndarray, reference: np.ndarray, floor: float) -> np.ndarray:
    values = badness[reference]
    if values.size == 0:
        return np.full(len(badness), np.nan)
    centre = float(np.median(values))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(values - centre)))
    return (badness - centre) / max(spread, floor, 1e-12)


def _grey_among_colour(colour: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Grey pictures in a collection, and a cluster (where it has enough members), that are mostly in colour."""
    measured = np.isfinite(colour)
    if not measured.any() or np.median(colour[measured]) < _COLOUR_CHROMA:
        return np.zeros(len(colour), dtype=bool)
    grey = measured & (np.nan_to_num(colour, nan=1.0) < _GREY_CHROMA)
    for label in np.unique(labels[grey]):
        members = (labels == label) & measured
        if label >= 0 and np.count_nonzero(members) >= _MIN_REFERENCE and np.median(colour[members]) < _COLOUR_CHROMA:
            grey &= labels != label
    return grey
