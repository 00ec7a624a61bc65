"""Choosing k: one scan over a range of k, scored by silhouette or by kNN-graph modularity.

Both pipelines scan the same way (:func:`scan_k`); they differ in how a k
becomes a partition (the fixed pipeline's method, or the adaptive pipeline's
k-means) and in the criterion. The elbow of the inertia curve (Kneedle) is
recorded beside the choice, for people to compare, and never decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pixclust.clustering.metrics import silhouette
from pixclust.clustering.reduce import is_whole_number
from pixclust.clustering.refine import nearest_neighbours
from pixclust.errors import UsageError

CRITERIA = ("silhouette", "modularity")
GRAPH_NEIGHBOURS = 10
# A larger k must beat the best modularity by more than this share to be preferred over a smaller one.
MODULARITY_TOLERANCE = 0.01


@dataclass(frozen=True)
class KScan:
    """What the automatic choice of k looked at.

    ``inertia`` is the within-cluster sum of squares of each k's labels in the
    clustering space (computed the same way for every method, so the elbow is
    comparable); ``silhouette`` is NaN where undefined. ``chosen_k`` is the
    k chosen by ``criterion`` (``"silhouette"``, or ``"modularity"`` in the
    adaptive pipeline, which also fills ``modularity``); ``elbow_k`` is shown
    beside it and is None when the curve has no knee.
    """

    ks: np.ndarray
    inertia: np.ndarray
    silhouette: np.ndarray
    chosen_k: int
    elbow_k: int | None
    criterion: str = "silhouette"
    modularity: np.ndarray | None = None

    def record(self) -> dict[str, object]:
        """The scan in JSON's types, NaN as None, as run.json keeps it."""
        return {
            "k": self.ks.tolist(),
            "inertia": self.inertia.tolist(),
            "silhouette": [_finite_or_none(v) for v in self.silhouette],
            "chosen_k": self.chosen_k,
            "criterion": self.criterion,
            "modularity": None if self.modularity is None else [_finite_or_none(v) for v in self.modularity],
            "elbow_k": self.elbow_k,
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def check_k_settings(k: object, k_range: object, random_state: object, n_samples: int) -> None:
    """Refuse, in a Python caller's words, a k, k range or seed that no clusterer can use on ``n_samples`` rows.

    ``RunConfig`` has already checked a run's settings in the words of whoever set them;
    this guards the estimators used on their own.
    """
    if k != "auto":
        if not is_whole_number(k) or k < 1:
            raise UsageError(f"k={k!r} is not allowed; use a whole number >= 1 or k='auto'")
        if k > n_samples:
            raise UsageError(f"k={k} is more than the {n_samples} images; use a smaller k or k='auto'")
    if (
        not isinstance(k_range, Sequence)
        or len(k_range) != 2
        or not all(is_whole_number(bound) for bound in k_range)
        or not 2 <= k_range[0] <= k_range[1]
    ):
        raise UsageError(f"k_range={k_range!r} cannot be scanned; need two whole numbers with 2 <= low <= high")
    if not is_whole_number(random_state):
        raise UsageError(f"random_state={random_state!r} is not allowed; use a whole number")


def scan_k(
    X: np.ndarray,
    k_range: tuple[int, int],
    partition_at: Callable[[int], tuple[np.ndarray, float]],
    *,
    criterion: str = "silhouette",
    silhouette_sample: int | None = 5000,
    random_state: int = 0,
) -> tuple[KScan, int]:
    """Partition ``X`` at every k of ``k_range`` (clamped to [2, N - 1]) and choose one.

    ``partition_at(k)`` gives a partition's labels and inertia. ``"silhouette"``
    keeps the best silhouette (ties to the smaller k); ``"modularity"`` the
    smallest k within ``MODULARITY_TOLERANCE`` of the best modularity on the
    rows' own ``GRAPH_NEIGHBOURS``-nearest-neighbour graph. Returns the scan and
    the position of the chosen k in it.
    """
    if criterion not in CRITERIA:
        raise UsageError(f"k criterion {criterion!r} is not known; choose one of {', '.join(CRITERIA)}")
    low, high = np.clip(k_range, 2, len(X) - 1)
    ks = np.arange(low, high + 1)
    neighbours = (
        nearest_neighbours(X, GRAPH_NEIGHBOURS, random_state=random_state) if criterion == "modularity" else None
    )
    inertia, silhouettes, modularity = [], [], []
    for k in ks:
        labels, partition_inertia = partition_at(int(k))
        inertia.append(partition_inertia)
        silhouettes.append(silhouette(X, labels, sample_size=silhouette_sample, random_state=random_state))
        if neighbours is not None:
            modularity.append(graph_modularity(neighbours, labels))
    inertia_values, silhouette_values = np.array(inertia), np.array(silhouettes)
    if neighbours is not None:
        modularity_values = np.array(modularity)
        chosen = choose_k_by_modularity(ks, modularity_values)
        scan = KScan(
            ks, inertia_values, silhouette_values, chosen, knee_point(ks, inertia_values), criterion, modularity_values
        )
        return scan, int(np.flatnonzero(ks == chosen)[0])
    # nanargmax returns the first maximum, which is the smaller k on a tie.
    best = int(np.nanargmax(silhouette_values)) if not np.isnan(silhouette_values).all() else 0
    return KScan(ks, inertia_values, silhouette_values, int(ks[best]), knee_point(ks, inertia_values)), best


def choose_k_by_modularity(ks: np.ndarray, modularity: np.ndarray) -> int:
    """The smallest k whose modularity is within the tolerance of the best."""
    best = np.nanmax(modularity)
    good = np.flatnonzero(modularity >= best - MODULARITY_TOLERANCE * abs(best))
    return int(ks[good[0]])


def graph_modularity(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Newman modularity of ``labels`` on the symmetrised k-nearest-neighbour graph (-1 ids are absent edges)."""
    rows, slots = np.nonzero(neighbours >= 0)
    cols = neighbours[rows, slots]
    # Each directed edge is counted from both ends, which is the symmetrised graph's edge list.
    same = labels[rows] == labels[cols]
    n_edges = len(rows)
    if n_edges == 0:
        return float("nan")
    degree = np.bincount(rows, minlength=len(labels)) + np.bincount(cols, minlength=len(labels))
    cluster_degree = np.bincount(labels, weights=degree) / (2 * n_edges)
    return float(same.mean() - np.sum(cluster_degree**2))


def knee_point(ks: np.ndarray, values: np.ndarray) -> int | None:
    """The k at the knee of a decreasing convex curve (Kneedle, Satopaa et al. 2011).

    Both axes are scaled to [0, 1] and the knee is where the curve lies
    furthest below the straight line joining its ends. None for fewer than
    3 points or a curve with no bend below that line.
    """
    # Hand-written: the kneed package would be a dependency for these few lines.
    xs = np.asarray(ks, dtype=np.float64)
    ys = np.asarray(values, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise UsageError(
            f"{xs.shape} ks and {ys.shape} values cannot form a curve; expected two 1-D arrays of one length"
        )
    if len(xs) < 3:
        return None
    x_span = xs.max() - xs.min()
    y_span = ys.max() - ys.min()
    if x_span == 0 or y_span == 0:
        return None
    x_scaled = (xs - xs.min()) / x_span
    # Flipped so a decreasing convex curve becomes an increasing concave one,
    # whose knee is its largest gap above the diagonal.
    y_flipped = (ys.max() - ys) / y_span
    gap = y_flipped - x_scaled
    best = int(np.argmax(gap))
    if gap[best] <= 1e-9:
        return None
    return int(xs[best])
