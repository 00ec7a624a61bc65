"""Clustering of reduced image embeddings, with an automatic choice of the number of clusters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pixclust.clustering.k_selection import KScan, check_k_settings, scan_k
from pixclust.clustering.large_kmeans import LargeKMeans
from pixclust.clustering.metrics import NOISE_LABEL, mean_silhouette, silhouette_values
from pixclust.clustering.reduce import Reduction, check_features, is_whole_number
from pixclust.errors import UsageError

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

    from pixclust.clustering.placement import ClusterModel

CLUSTER_METHODS = ("kmeans", "agglomerative", "gmm", "hdbscan")
DEFAULT_CLUSTER_METHOD = "kmeans"

KMEANS_STARTS = 10
# Above this many rows k-means makes KMEANS_FEW_STARTS starts.
KMEANS_FEW_RESTARTS_ABOVE = 20_000
KMEANS_FEW_STARTS = 3
# Above this many rows k-means is fitted on a sample by faiss (large_kmeans.py) instead of on every row.
KMEANS_SAMPLED_ABOVE = 50_000
GMM_FULL_COVARIANCE_MAX_DIMS = 64


@dataclass
class ClusterResult:
    """Cluster assignment of every image, with what was measured on the way.

    ``labels[i]`` is the cluster of row ``i`` (0 = largest, -1 = noise);
    ``distances`` are to the cluster centre in the clustering space;
    ``silhouettes`` are per image in that space (NaN outside the scored sample
    and for noise); ``coords_2d`` is a 2-D map (the first two principal components of the features clustered); ``choice``
    records what the adaptive pipeline chose (None for the fixed pipeline);
    ``model`` places new images as this clustering would (None when every image is noise).
    """

    labels: np.ndarray
    n_clusters: int
    distances: np.ndarray
    silhouettes: np.ndarray
    coords_2d: np.ndarray
    reduction: Reduction
    k_scan: KScan | None
    silhouette: float
    method: str
    choice: dict[str, object] | None = None
    model: ClusterModel | None = None


def kmeans_starts(X: np.ndarray, k: int, *, random_state: int = 0) -> list[tuple[float, np.ndarray]]:
    """Every k-means start's inertia and labels, the lowest inertia first.

    scikit-learn's ``KMeans`` on every row (``KMEANS_STARTS`` starts up to
    ``KMEANS_FEW_RESTARTS_ABOVE`` rows, ``KMEANS_FEW_STARTS`` above), faiss fitted on a sample
    above ``KMEANS_SAMPLED_ABOVE`` rows. The starts are kept apart, not only the best, because
    near-equal inertias can hide different clusterings (see ``refine.refine_best``).
    """
    from sklearn.cluster import KMeans

    n_rows = len(X)
    solutions = []
    for start in range(KMEANS_STARTS if n_rows <= KMEANS_FEW_RESTARTS_ABOVE else KMEANS_FEW_STARTS):
        seed = random_state + start
        if n_rows > KMEANS_SAMPLED_ABOVE:
            model: KMeans | LargeKMeans = LargeKMeans(k, n_init=1, random_state=seed).fit(X)
        else:
            model = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X)
        solutions.append((float(model.inertia_), np.asarray(model.labels_, dtype=np.int64)))
    return sorted(solutions, key=lambda solution: solution[0])


def relabel_by_size(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters 0, 1, ... from the largest down (ties: smaller old label first); noise stays -1.

    Returns the new int64 labels and, for each new label, the old one it replaces.
    """
    labels = np.asarray(labels)
    clustered = labels != NOISE_LABEL
    old_labels, counts = np.unique(labels[clustered], return_counts=True)
    old_by_size = old_labels[np.lexsort((old_labels, -counts))]
    new_of_old = np.empty(len(old_labels), dtype=np.int64)
    new_of_old[np.searchsorted(old_labels, old_by_size)] = np.arange(len(old_labels))
    new_labels = np.full(len(labels), NOISE_LABEL, dtype=np.int64)
    new_labels[clustered] = new_of_old[np.searchsorted(old_labels, labels[clustered])]
    return new_labels, old_by_size


def centres_and_distances(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each cluster 0..n-1, and each point's Euclidean distance to its own (NaN for noise).

    One cluster at a time, so the temporary arrays stay the size of the
    largest cluster rather than of all N x m features.
    """
    # Labels run 0..n-1 after relabelling; all noise (max -1) means no clusters.
    n_clusters = int(labels.max()) + 1
    centres = np.zeros((n_clusters, X.shape[1]), dtype=np.float64)
    distances = np.full(len(labels), np.nan)
    for label in range(n_clusters):
        is_member = labels == label
        members = X[is_member].astype(np.float64)
        centres[label] = members.mean(axis=0)
        distances[is_member] = np.linalg.norm(members - centres[label], axis=1)
    return centres, distances


@dataclass(frozen=True)
class _Partition:
    """One clustering of the training points, labels already ordered by size."""

    labels: np.ndarray
    centres: np.ndarray
    distances: np.ndarray
    mixture: GaussianMixture | None
    mixture_components: np.ndarray | None

    @classmethod
    def from_raw_labels(
        cls, X: np.ndarray, raw_labels: np.ndarray, mixture: GaussianMixture | None = None
    ) -> _Partition:
        labels, old_by_size = relabel_by_size(raw_labels)
        centres, distances = centres_and_distances(X, labels)
        return cls(labels, centres, distances, mixture, old_by_size if mixture is not None else None)

    @property
    def inertia(self) -> float:
        return float(np.nansum(self.distances**2))


class ImageClusterer:
    """Cluster N x m points with k-means, Ward agglomerative, a Gaussian mixture or HDBSCAN.

    ``k="auto"`` scans ``k_range`` (clamped to [2, N - 1]) and keeps the k
    with the best silhouette, ties going to the smaller k; fewer than 3 points
    form a single cluster. HDBSCAN finds the number of clusters itself, so it
    ignores ``k_range`` and refuses an integer ``k``; ``min_cluster_size``
    (default ``max(5, N // 100)``) is used by HDBSCAN only. Clusters are
    numbered from the largest (0) down; -1 marks HDBSCAN's noise.

    Fitted attributes: ``labels_``, ``n_clusters_``, ``cluster_centers_`` (mean
    of each cluster's members), ``distances_`` (to the own centre, NaN for
    noise), ``k_scan_`` (a :class:`KScan`, or None without a scan),
    ``silhouette_values_`` (per point, NaN for noise and outside the scored
    sample), ``silhouette_`` (their mean, NaN where undefined) and ``choice_``
    (None: the method and k are the caller's or the scan's; see
    :class:`~pixclust.clustering.adaptive.AdaptiveClusterer` for a pipeline that chooses more).
    """

    def __init__(
        self,
        *,
        method: str = DEFAULT_CLUSTER_METHOD,
        k: int | str = "auto",
        k_range: tuple[int, int] = (2, 20),
        random_state: int = 0,
        silhouette_sample: int = 5000,
        min_cluster_size: int | None = None,
    ) -> None:
        self.method = method
        self.k = k
        self.k_range = k_range
        self.random_state = random_state
        self.silhouette_sample = silhouette_sample
        self.min_cluster_size = min_cluster_size

    def _check_params(self, n_samples: int) -> None:
        if self.method not in CLUSTER_METHODS:
            raise UsageError(f"method={self.method!r} is not known; choose one of {', '.join(CLUSTER_METHODS)}")
        if self.method == "hdbscan" and self.k != "auto":
            raise UsageError(
                f"k={self.k!r} cannot be used with hdbscan, which finds the number of clusters itself; use k='auto'"
            )
        check_k_settings(self.k, self.k_range, self.random_state, n_samples)
        if not is_whole_number(self.silhouette_sample) or self.silhouette_sample < 3:
            raise UsageError(f"silhouette_sample {self.silhouette_sample!r} is not allowed; use a whole number >= 3")
        if self.min_cluster_size is not None and (
            not is_whole_number(self.min_cluster_size) or self.min_cluster_size < 2
        ):
            raise UsageError(
                f"min_cluster_size {self.min_cluster_size!r} is not allowed; use a whole number >= 2 or None"
            )

    def _partition_at_k(self, X: np.ndarray, k: int, ward_tree: np.ndarray | None) -> _Partition:
        from scipy.cluster.hierarchy import fcluster
        from sklearn.mixture import GaussianMixture

        n_samples = X.shape[0]
        if k == 1:
            return _Partition.from_raw_labels(X, np.zeros(n_samples, dtype=np.int64))
        if self.method == "kmeans":
            _, labels = kmeans_starts(X, k, random_state=self.random_state)[0]
            return _Partition.from_raw_labels(X, labels)
        if self.method == "gmm":
            covariance = "full" if X.shape[1] <= GMM_FULL_COVARIANCE_MAX_DIMS else "diag"
            mixture = GaussianMixture(
                n_components=k,
                covariance_type=covariance,
                n_init=1,
                reg_covar=1e-5,
                random_state=self.random_state,
            ).fit(X)
            return _Partition.from_raw_labels(X, mixture.predict(X), mixture)
        return _Partition.from_raw_labels(X, fcluster(ward_tree, k, criterion="maxclust"))

    def _ward_tree(self, X: np.ndarray) -> np.ndarray | None:
        """The full Ward tree, built once so every k is a cheap cut of it."""
        from scipy.cluster.hierarchy import ward

        if self.method != "agglomerative" or X.shape[0] < 2:
            return None
        return ward(X)

    def _scan_k(self, X: np.ndarray) -> tuple[KScan, _Partition]:
        ward_tree = self._ward_tree(X)
        partitions: list[_Partition] = []

        def partition_at(k: int) -> tuple[np.ndarray, float]:
            partitions.append(self._partition_at_k(X, k, ward_tree))
            return partitions[-1].labels, partitions[-1].inertia

        scan, best = scan_k(
            X, self.k_range, partition_at, silhouette_sample=self.silhouette_sample, random_state=self.random_state
        )
        return scan, partitions[best]

    def _hdbscan(self, X: np.ndarray) -> _Partition:
        from sklearn.cluster import HDBSCAN

        n_samples = X.shape[0]
        min_cluster_size = self.min_cluster_size or max(5, n_samples // 100)
        if n_samples < min_cluster_size:
            # No group can reach the minimum size; HDBSCAN itself refuses such input.
            return _Partition.from_raw_labels(X, np.full(n_samples, NOISE_LABEL))
        return _Partition.from_raw_labels(X, HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(X))

    def fit(self, X: np.ndarray) -> ImageClusterer:
        """Cluster the rows of ``X``; see the class docstring for what is fitted."""
        features = check_features(X)
        if not np.issubdtype(features.dtype, np.floating):
            features = features.astype(np.float64)
        n_samples = features.shape[0]
        self._check_params(n_samples)

        scan = None
        if self.method == "hdbscan":
            partition = self._hdbscan(features)
        elif self.k == "auto" and n_samples >= 3:
            scan, partition = self._scan_k(features)
        else:
            k = 1 if self.k == "auto" else int(self.k)
            partition = self._partition_at_k(features, k, self._ward_tree(features) if k > 1 else None)

        self.labels_ = partition.labels
        self.n_clusters_ = len(partition.centres)
        self.cluster_centers_ = partition.centres
        self.distances_ = partition.distances
        self.k_scan_ = scan
        self.silhouette_values_ = silhouette_values(
            features, partition.labels, sample_size=self.silhouette_sample, random_state=self.random_state
        )
        self.silhouette_ = mean_silhouette(self.silhouette_values_)
        # The fixed pipeline chooses nothing but k, and k_scan_ says how.
        self.choice_ = None
        self._mixture = partition.mixture
        self._mixture_components = partition.mixture_components
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Cluster of each new row: the mixture's most probable component for gmm, else the nearest centre."""
        from sklearn.metrics import pairwise_distances_argmin

        if not hasattr(self, "labels_"):
            raise UsageError("this ImageClusterer is not fitted yet; call fit first")
        features = check_features(X)
        n_dims = self.cluster_centers_.shape[1]
        if features.shape[1] != n_dims:
            raise UsageError(
                f"features with {features.shape[1]} columns cannot be assigned; the clusters were fitted on {n_dims}"
            )
        if self._mixture is not None:
            # Components are reordered to the size-ordered labels; empty components are left out.
            probabilities = self._mixture.predict_proba(features)[:, self._mixture_components]
            return np.argmax(probabilities, axis=1).astype(np.int64)
        if self.n_clusters_ == 0:
            return np.full(features.shape[0], NOISE_LABEL, dtype=np.int64)
        return pairwise_distances_argmin(features, self.cluster_centers_).astype(np.int64)

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        """Fit on ``X`` and return its labels."""
        return self.fit(X).labels_
