from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs

from pixclust.clustering.adaptive import AdaptiveClusterer
from pixclust.clustering.clusterer import CLUSTER_METHODS, ImageClusterer
from pixclust.clustering.k_selection import knee_point
from pixclust.clustering.metrics import cluster_accuracy
from pixclust.clustering.reduce import reduce_features
from pixclust.errors import UsageError

BLOB_SIZES = [200, 50, 120, 80, 30]


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(n_samples=BLOB_SIZES, n_features=8, cluster_std=1.0, random_state=0)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits(return_X_y=True)


@pytest.fixture(scope="module")
def blob_fits(blobs: tuple[np.ndarray, np.ndarray]) -> dict[str, ImageClusterer]:
    X, _ = blobs
    return {method: ImageClusterer(method=method, k_range=(2, 10)).fit(X) for method in CLUSTER_METHODS}


def test_knee_point_finds_the_bend_of_a_convex_curve() -> None:
    ks = np.arange(2, 11)
    inertia = np.array([100, 60, 25, 10, 9, 8, 7, 6, 5])
    assert knee_point(ks, inertia) == 5
    assert knee_point(ks, 1000 * inertia + 7) == 5


def test_knee_point_is_none_without_a_bend() -> None:
    ks = np.arange(2, 11)
    assert knee_point(ks, 20.0 - ks) is None
    assert knee_point(ks, np.full(len(ks), 3.0)) is None
    assert knee_point(np.array([2, 3]), np.array([10.0, 1.0])) is None


@pytest.mark.parametrize("method", CLUSTER_METHODS)
def test_separated_blobs_are_found_exactly(
    blob_fits: dict[str, ImageClusterer], blobs: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    _, truth = blobs
    fitted = blob_fits[method]
    assert fitted.n_clusters_ == 5
    assert cluster_accuracy(truth, fitted.labels_) == 1.0
    assert fitted.silhouette_ > 0.7


@pytest.mark.parametrize("method", ["kmeans", "agglomerative", "gmm"])
def test_auto_k_picks_the_true_k_by_silhouette_and_the_elbow_agrees(
    blob_fits: dict[str, ImageClusterer], method: str
) -> None:
    scan = blob_fits[method].k_scan_
    np.testing.assert_array_equal(scan.ks, np.arange(2, 11))
    assert scan.chosen_k == 5
    assert abs(scan.elbow_k - 5) <= 1
    assert scan.silhouette[3] == np.nanmax(scan.silhouette)
    assert np.all(np.diff(scan.inertia[:4]) < 0)


@pytest.mark.parametrize("method", CLUSTER_METHODS)
def test_clusters_are_numbered_by_size(blob_fits: dict[str, ImageClusterer], method: str) -> None:
    counts = np.bincount(blob_fits[method].labels_)
    np.testing.assert_array_equal(counts, sorted(BLOB_SIZES, reverse=True))


@pytest.mark.parametrize("method", CLUSTER_METHODS)
def test_centres_and_distances_describe_the_members(
    blob_fits: dict[str, ImageClusterer], blobs: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    X, _ = blobs
    fitted = blob_fits[method]
    assert fitted.labels_.dtype == np.int64
    for label in range(fitted.n_clusters_):
        np.testing.assert_allclose(fitted.cluster_centers_[label], X[fitted.labels_ == label].mean(axis=0))
    expected = np.linalg.norm(X - fitted.cluster_centers_[fitted.labels_], axis=1)
    np.testing.assert_allclose(fitted.distances_, expected)


def test_hdbscan_marks_scattered_points_as_noise(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    scattered = np.random.default_rng(0).uniform(-40, 40, size=(20, X.shape[1]))
    fitted = ImageClusterer(method="hdbscan").fit(np.vstack([X, scattered]))
    noise = fitted.labels_ == -1
    assert fitted.n_clusters_ == 5
    assert noise[len(X) :].mean() > 0.9
    assert np.isnan(fitted.distances_[noise]).all()
    assert not np.isnan(fitted.distances_[~noise]).any()
    assert fitted.k_scan_ is None


def test_digits_pca_then_kmeans(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, truth = digits
    coords = reduce_features(X, "pca").coords
    fitted = ImageClusterer(method="kmeans", k=10).fit(coords)
    # Measured 0.79.
    assert cluster_accuracy(truth, fitted.labels_) > 0.7
    np.testing.assert_array_equal(fitted.predict(coords), fitted.labels_)
    assert fitted.k_scan_ is None
    again = ImageClusterer(method="kmeans", k=10).fit(coords)
    np.testing.assert_array_equal(again.labels_, fitted.labels_)


@pytest.mark.slow
def test_digits_umap_then_gmm(digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, truth = digits
    coords = reduce_features(X, "umap").coords
    fitted = ImageClusterer(method="gmm", k=10).fit(coords)
    # Measured 0.88.
    assert cluster_accuracy(truth, fitted.labels_) > 0.8
    np.testing.assert_array_equal(fitted.predict(coords), fitted.labels_)
    # The same settings give the same map (on a part of the digits: a second whole map is the cost of the first).
    few = X[:300]
    np.testing.assert_array_equal(reduce_features(few, "umap").coords, reduce_features(few, "umap").coords)


@pytest.mark.parametrize("method", CLUSTER_METHODS)
def test_fitting_twice_gives_identical_labels(blobs: tuple[np.ndarray, np.ndarray], method: str) -> None:
    X, _ = blobs
    first = ImageClusterer(method=method, k_range=(3, 6), random_state=3).fit_predict(X)
    second = ImageClusterer(method=method, k_range=(3, 6), random_state=3).fit_predict(X)
    np.testing.assert_array_equal(first, second)


def test_predict_assigns_new_points_to_the_nearest_cluster(blob_fits: dict[str, ImageClusterer]) -> None:
    fitted = blob_fits["agglomerative"]
    new_points = fitted.cluster_centers_ + 0.1
    np.testing.assert_array_equal(fitted.predict(new_points), np.arange(fitted.n_clusters_))


@pytest.mark.parametrize("method", CLUSTER_METHODS)
@pytest.mark.parametrize("n_samples", [1, 2, 3])
def test_tiny_inputs_do_not_crash(method: str, n_samples: int) -> None:
    X = np.random.default_rng(0).normal(size=(n_samples, 4))
    fitted = ImageClusterer(method=method).fit(X)
    assert fitted.labels_.shape == (n_samples,)
    assert fitted.predict(X).shape == (n_samples,)
    if method != "hdbscan":
        assert set(fitted.labels_) == set(range(fitted.n_clusters_))
    if n_samples < 3:
        assert fitted.n_clusters_ <= 1
        assert math.isnan(fitted.silhouette_)


def test_k_may_equal_the_number_of_images() -> None:
    X = np.random.default_rng(0).normal(size=(4, 3))
    fitted = ImageClusterer(method="agglomerative", k=4).fit(X)
    assert sorted(fitted.labels_) == [0, 1, 2, 3]
    np.testing.assert_array_equal(fitted.distances_, 0.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": 50}, "k=50 is more than the 12 images"),
        ({"k": 0}, "k=0 is not allowed"),
        ({"k": "many"}, "k='many' is not allowed"),
        ({"method": "hdbscan", "k": 3}, "k=3 cannot be used with hdbscan"),
        ({"method": "dbscan"}, "method='dbscan' is not known"),
        ({"k_range": (5, 2)}, r"k_range=\(5, 2\) cannot be scanned"),
        ({"random_state": None}, "random_state=None is not allowed"),
        ({"silhouette_sample": 0}, "silhouette_sample 0 is not allowed"),
        ({"method": "hdbscan", "min_cluster_size": 1}, "min_cluster_size 1 is not allowed"),
    ],
)
def test_bad_parameters_are_usage_errors(params: dict[str, object], message: str) -> None:
    X = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.raises(UsageError, match=message):
        ImageClusterer(**params).fit(X)
    # The default pipeline's estimator speaks the same words about the settings they share.
    shared = {name: value for name, value in params.items() if name in ("k", "k_range", "random_state")}
    if shared and params.get("method") != "hdbscan":
        with pytest.raises(UsageError, match=message):
            AdaptiveClusterer(**shared).fit({"embedding": X})


def test_predict_checks_it_was_fitted_and_the_dimensions(blob_fits: dict[str, ImageClusterer]) -> None:
    with pytest.raises(UsageError, match="not fitted"):
        ImageClusterer().predict(np.zeros((2, 8)))
    with pytest.raises(UsageError, match="3 columns"):
        blob_fits["kmeans"].predict(np.zeros((2, 3)))
