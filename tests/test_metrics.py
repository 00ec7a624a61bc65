from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from pixclust.clustering.metrics import cluster_accuracy, clustering_scores, silhouette
from pixclust.errors import UsageError


def test_accuracy_is_one_for_a_permuted_labelling() -> None:
    truth = np.repeat([0, 1, 2, 3], 5)
    labels = np.array([3, 0, 2, 1])[truth]
    assert cluster_accuracy(truth, labels) == 1.0


def test_accuracy_accepts_string_classes() -> None:
    truth = ["cat", "cat", "dog", "dog", "owl", "owl"]
    assert cluster_accuracy(truth, np.array([2, 2, 0, 0, 1, 0])) == pytest.approx(5 / 6)


def test_accuracy_with_more_clusters_than_classes_counts_unmatched_clusters_as_wrong() -> None:
    truth = ["a", "a", "a", "b", "b", "b"]
    assert cluster_accuracy(truth, np.array([0, 0, 1, 2, 2, 2])) == pytest.approx(5 / 6)


def test_accuracy_with_fewer_clusters_than_classes() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    assert cluster_accuracy(truth, np.array([0, 0, 0, 0, 1, 1])) == pytest.approx(4 / 6)


def test_scores_of_a_perfect_clustering_with_noise_as_its_own_cluster() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    scores = clustering_scores(truth, np.array([-1, -1, 0, 0, 1, 1]))
    assert scores == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})


def test_scores_of_an_uninformative_clustering_are_low() -> None:
    truth = np.repeat([0, 1], 50)
    labels = np.tile([0, 1], 50)
    scores = clustering_scores(truth, labels)
    assert scores["acc"] == 0.5
    assert scores["nmi"] < 0.01
    assert scores["ari"] < 0.01


def test_scores_refuse_sequences_of_different_lengths() -> None:
    with pytest.raises(UsageError, match="3 true classes and 2 cluster labels"):
        clustering_scores(["a", "b", "c"], np.array([0, 1]))


def test_silhouette_matches_scikit_learn_without_noise() -> None:
    X, labels = make_blobs(n_samples=300, centers=3, random_state=0)
    assert silhouette(X, labels, sample_size=None) == pytest.approx(silhouette_score(X, labels))


def test_silhouette_leaves_noise_out() -> None:
    X, labels = make_blobs(n_samples=300, centers=3, random_state=0)
    with_noise = np.where(labels == 2, -1, labels)
    kept = labels != 2
    assert silhouette(X, with_noise) == pytest.approx(silhouette_score(X[kept], labels[kept]))


def test_silhouette_sample_is_close_to_the_full_score_and_repeatable() -> None:
    X, labels = make_blobs(n_samples=3000, centers=4, random_state=1)
    full = silhouette(X, labels, sample_size=None)
    sampled = silhouette(X, labels, sample_size=500, random_state=7)
    assert sampled == pytest.approx(full, abs=0.05)
    assert silhouette(X, labels, sample_size=500, random_state=7) == sampled


@pytest.mark.parametrize(
    "labels",
    [np.zeros(10, dtype=int), np.array([-1] * 8 + [0, 1]), np.array([0, 1] + [-1] * 8), np.arange(10)],
    ids=["one cluster", "two points left", "noise and singletons", "every point alone"],
)
def test_silhouette_is_nan_where_undefined(labels: np.ndarray) -> None:
    X = np.random.default_rng(0).normal(size=(10, 3))
    assert math.isnan(silhouette(X, labels))


def test_silhouette_refuses_a_bad_sample_size() -> None:
    with pytest.raises(UsageError, match="sample size 1 "):
        silhouette(np.zeros((5, 2)), np.array([0, 0, 1, 1, 1]), sample_size=1)
