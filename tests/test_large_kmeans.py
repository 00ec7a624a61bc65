"""LargeKMeans: faiss k-means fitted on a sample and assigned in chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from pixclust.clustering import clusterer as clustering
from pixclust.clustering.large_kmeans import LargeKMeans
from pixclust.errors import UsageError


def blobs(n: int, dim: int, k: int, *, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 4 * rng.standard_normal((k, dim)).astype(np.float32)
    truth = rng.integers(0, k, n)
    return centres[truth] + spread * rng.standard_normal((n, dim)).astype(np.float32), truth


def test_recovers_well_separated_blobs_from_a_sample() -> None:
    X, truth = blobs(30_000, 16, 12, spread=0.5)
    model = LargeKMeans(12, sample_size=3_000, n_init=3, random_state=0).fit(X)
    assert adjusted_rand_score(truth, model.labels_) > 0.99
    assert model.cluster_centers_.shape == (12, 16)
    expected = np.linalg.norm(X - model.cluster_centers_[model.labels_], axis=1)
    np.testing.assert_allclose(model.distances_, expected, rtol=1e-3, atol=1e-3)
    assert model.inertia_ == pytest.approx(float(np.sum(expected.astype(np.float64) ** 2)), rel=1e-3)


def test_spherical_clusters_by_direction_and_keeps_unit_centres() -> None:
    directions, truth = blobs(20_000, 32, 8, spread=0.3, seed=1)
    # Lengths vary tenfold: Euclidean k-means would split by length, cosine k-means must not.
    lengths = np.random.default_rng(2).uniform(0.5, 5.0, (len(directions), 1)).astype(np.float32)
    X = directions / np.linalg.norm(directions, axis=1, keepdims=True) * lengths
    model = LargeKMeans(8, spherical=True, n_init=3, random_state=0).fit(X)
    assert adjusted_rand_score(truth, model.labels_) > 0.99
    np.testing.assert_allclose(np.linalg.norm(model.cluster_centers_, axis=1), 1.0, atol=1e-5)
    assert model.distances_.max() <= 2.0


def test_same_random_state_same_result_and_another_state_another_sample() -> None:
    X, _ = blobs(20_000, 8, 40, spread=2.0, seed=3)
    first = LargeKMeans(40, sample_size=2_000, random_state=7).fit(X)
    again = LargeKMeans(40, sample_size=2_000, random_state=7).fit(X)
    other = LargeKMeans(40, sample_size=2_000, random_state=8).fit(X)
    np.testing.assert_array_equal(first.cluster_centers_, again.cluster_centers_)
    np.testing.assert_array_equal(first.labels_, again.labels_)
    assert not np.array_equal(first.cluster_centers_, other.cluster_centers_)


def test_chunked_assignment_equals_one_pass_and_the_exact_nearest_centre(tmp_path: Path) -> None:
    X, _ = blobs(10_000, 24, 30, spread=3.0, seed=4)
    whole = LargeKMeans(30, chunk_size=len(X), random_state=0).fit(X)
    chunked = LargeKMeans(30, chunk_size=997, random_state=0).fit(X)
    np.testing.assert_array_equal(chunked.labels_, whole.labels_)
    np.testing.assert_allclose(chunked.distances_, whole.distances_, rtol=1e-5)
    exact = np.linalg.norm(X[:, None, :] - whole.cluster_centers_[None, :, :], axis=2)
    np.testing.assert_array_equal(whole.labels_, np.argmin(exact, axis=1))
    # A memory-mapped file streams through the same chunks.
    np.save(tmp_path / "x.npy", X)
    mapped = LargeKMeans(30, chunk_size=997, random_state=0).fit(np.load(tmp_path / "x.npy", mmap_mode="r"))
    np.testing.assert_array_equal(mapped.labels_, whole.labels_)
    np.testing.assert_array_equal(mapped.predict(X[:500]), whole.labels_[:500])


def test_bad_parameters_are_usage_errors() -> None:
    X, _ = blobs(100, 4, 2, spread=1.0)
    with pytest.raises(UsageError, match="more than the 100 rows"):
        LargeKMeans(101).fit(X)
    with pytest.raises(UsageError, match="sample_size"):
        LargeKMeans(10, sample_size=5).fit(X)
    with pytest.raises(UsageError, match="not fitted"):
        LargeKMeans(2).predict(X)
    with pytest.raises(UsageError, match="columns"):
        LargeKMeans(2).fit(X).predict(X[:, :3])


def test_image_clusterer_fits_k_means_on_a_sample_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    # Uniform points have many k-means optima, so the two implementations visibly disagree.
    X = np.random.default_rng(5).uniform(size=(6_000, 4)).astype(np.float32)
    monkeypatch.setattr(clustering, "KMEANS_SAMPLED_ABOVE", 5_000)
    fitted = clustering.ImageClusterer(k=7, random_state=0).fit(X)
    # One faiss fit per start (seeds 0, 1, ...), the lowest inertia kept.
    starts = [LargeKMeans(7, n_init=1, random_state=seed).fit(X) for seed in range(clustering.KMEANS_STARTS)]
    sampled, _ = clustering.relabel_by_size(min(starts, key=lambda model: model.inertia_).labels_)
    every_row, _ = clustering.relabel_by_size(KMeans(7, n_init=clustering.KMEANS_STARTS, random_state=0).fit_predict(X))
    np.testing.assert_array_equal(fitted.labels_, sampled)
    assert not np.array_equal(fitted.labels_, every_row)
