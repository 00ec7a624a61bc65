"""Scores of a clustering: against known classes (when a folder has them) and internal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pixclust.clustering.reduce import is_whole_number
from pixclust.errors import UsageError

NOISE_LABEL = -1


def _check_pair(truth: Sequence, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth_array = np.asarray(truth)
    label_array = np.asarray(labels)
    if truth_array.ndim != 1 or label_array.ndim != 1:
        raise UsageError(
            f"truth of shape {truth_array.shape} and labels of shape {label_array.shape} cannot be compared; "
            "expected two 1-D sequences"
        )
    if len(truth_array) != len(label_array) or len(label_array) == 0:
        raise UsageError(
            f"{len(truth_array)} true classes and {len(label_array)} cluster labels cannot be compared; "
            "expected the same non-zero number of each"
        )
    return truth_array, label_array


def cluster_accuracy(truth: Sequence, labels: np.ndarray) -> float:
    """Share of images whose cluster maps to their class under the best one-to-one matching.

    The matching is the Hungarian assignment on the class x cluster contingency
    table; with more clusters than classes (or fewer) the unmatched ones count
    as wrong. Noise (-1) is a cluster like any other.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    truth_array, label_array = _check_pair(truth, labels)
    table = contingency_matrix(truth_array, label_array)
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / len(label_array))


def clustering_scores(truth: Sequence, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (Hungarian), NMI and ARI of ``labels`` against ``truth``; noise (-1) counts as its own cluster."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth_array, label_array = _check_pair(truth, labels)
    return {
        "acc": cluster_accuracy(truth_array, label_array),
        "nmi": float(normalized_mutual_info_score(truth_array, label_array)),
        "ari": float(adjusted_rand_score(truth_array, label_array)),
    }


def silhouette(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    sample_size: int | None = 5000,
    random_state: int = 0,
) -> float:
    """Mean silhouette of the non-noise points, or NaN where it is undefined.

    Undefined means fewer than 3 points or fewer than 2 clusters once noise is
    dropped (or every point alone in its cluster). Above ``sample_size`` points
    a random sample is scored, which keeps the cost flat at 100k images;
    ``None`` scores every point.
    """
    return mean_silhouette(silhouette_values(X, labels, sample_size=sample_size, random_state=random_state))


def mean_silhouette(values: np.ndarray) -> float:
    """The mean of per-point silhouettes where they are defined; NaN where none is."""
    scored = values[np.isfinite(values)]
    return float(scored.mean()) if len(scored) else float("nan")


def silhouette_values(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    sample_size: int | None = 5000,
    random_state: int = 0,
) -> np.ndarray:
    """Per-point silhouette, NaN for noise, for points outside the sample, and where undefined."""
    if sample_size is not None and (not is_whole_number(sample_size) or sample_size < 3):
        raise UsageError(f"silhouette sample size {sample_size!r} is not allowed; use a whole number >= 3 or None")
    points = np.asarray(X)
    label_array = np.asarray(labels)
    if points.ndim != 2 or label_array.ndim != 1 or points.shape[0] != label_array.shape[0]:
        raise UsageError(
            f"features of shape {points.shape} and labels of shape {label_array.shape} do not match; "
            "expected an N x D array and N labels"
        )
    values = np.full(len(label_array), np.nan)
    scored = np.flatnonzero(label_array != NOISE_LABEL)
    if sample_size is not None and len(scored) > sample_size:
        scored = np.sort(np.random.default_rng(random_state).choice(scored, size=sample_size, replace=False))
    n_clusters = len(np.unique(label_array[scored]))
    if len(scored) < 3 or not 2 <= n_clusters <= len(scored) - 1:
        return values
    from sklearn.metrics import silhouette_samples

    values[scored] = silhouette_samples(points[scored], label_array[scored])
    return values
