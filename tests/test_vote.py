"""The neighbours' vote after the refinement, and the head fitted to it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from pixclust.clustering import vote
from pixclust.clustering.refine import nearest_neighbours
from pixclust.clustering.vote import OWN_VOTE, head_labels, isolated_anchors, neighbour_vote, voted_head


def test_a_row_takes_the_cluster_most_of_its_neighbours_are_in() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    anchors = np.arange(7)
    neighbours = np.array(
        [
            [1, 2, -1],
            [0, 2, -1],
            [0, 1, -1],
            [4, 5, -1],
            [3, 5, -1],
            [3, 4, -1],
            # Row 6 is in cluster 0, but both its neighbours are in cluster 1.
            [3, 4, -1],
        ]
    )
    np.testing.assert_array_equal(neighbour_vote(labels, anchors, neighbours), [0, 0, 0, 1, 1, 1, 1])
    settled = np.arange(7) == 6
    np.testing.assert_array_equal(neighbour_vote(labels, anchors, neighbours, settled=settled), labels)


def test_a_tie_keeps_a_row_where_it_is_and_other_rows_are_left_alone() -> None:
    assert 0 < OWN_VOTE < 1
    labels = np.array([0, 1, 0, 1, 1])
    # Row 4 is not an anchor.
    anchors = np.array([0, 1, 2, 3])
    neighbours = np.array([[1, 2], [0, 3], [0, 1], [1, 0]])
    voted = neighbour_vote(labels, anchors, neighbours)
    # Rows 0 and 1 have one neighbour in each cluster: each stays, whichever cluster comes first.
    assert voted[0] == 0 and voted[1] == 1 and voted[4] == 1


def _digits_clustering() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    features = PCA(32, random_state=0).fit_transform(load_digits().data).astype(np.float32)
    labels = KMeans(10, n_init=3, random_state=0).fit_predict(features)
    anchors = np.arange(len(features))
    return features, labels, anchors, nearest_neighbours(features, 20)


def test_an_image_far_from_all_its_neighbours_keeps_its_cluster() -> None:
    features, labels, _, _ = _digits_clustering()
    # A digit far off along a direction no digit takes, in its own cluster of one row at first, and then in
    # the cluster of its nearest digits' runner-up; its neighbours are all elsewhere either way.
    far = features[0] + 6 * features.std(axis=0).max() * np.eye(features.shape[1], dtype=np.float32)[-1]
    features = np.vstack([features, far])
    anchors, neighbours = np.arange(len(features)), nearest_neighbours(features, 20)
    isolated = isolated_anchors(features, anchors, neighbours)
    assert isolated[-1]
    assert isolated[:-1].mean() < 0.02
    nearest = labels[neighbours[-1, :10]]
    elsewhere = (np.bincount(nearest, minlength=10).argmax() + 1) % 10
    labels = np.append(labels, elsewhere)
    assert neighbour_vote(labels, anchors, neighbours)[-1] != elsewhere
    assert neighbour_vote(labels, anchors, neighbours, settled=isolated)[-1] == elsewhere


def test_the_head_assigns_as_the_vote_did_and_places_rows_by_one_rule() -> None:
    features, labels, anchors, neighbours = _digits_clustering()
    voted = neighbour_vote(labels, anchors, neighbours)
    assert 0 < np.mean(voted != labels) < 0.2
    head = voted_head(features, labels, anchors, neighbours)
    assert head is not None
    weight, bias = head
    assert weight.shape == (features.shape[1], 10) and bias.shape == (10,)
    assigned = head_labels(features, weight, bias)
    np.testing.assert_array_equal(assigned, np.argmax(features @ weight + bias, axis=1))
    assert np.mean(assigned == voted) > 0.95


def test_two_clusters_get_a_head_of_two_columns() -> None:
    features, _, anchors, neighbours = _digits_clustering()
    labels = KMeans(2, n_init=3, random_state=0).fit_predict(features)
    head = voted_head(features, labels, anchors, neighbours)
    assert head is not None
    weight, bias = head
    assert weight.shape == (features.shape[1], 2)
    assigned = head_labels(features, weight, bias)
    assert set(assigned.tolist()) == {0, 1}
    assert np.mean(assigned == neighbour_vote(labels, anchors, neighbours)) > 0.95


def test_no_head_where_the_vote_moves_nothing_or_empties_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels, anchors, neighbours = _digits_clustering()
    settled = neighbour_vote(neighbour_vote(labels, anchors, neighbours), anchors, neighbours)
    np.testing.assert_array_equal(neighbour_vote(settled, anchors, neighbours), settled)
    assert voted_head(features, settled, anchors, neighbours) is None
    # A cluster of one row, all of whose neighbours are elsewhere, would vanish.
    lonely = labels.copy()
    lonely[0] = 10
    assert voted_head(features, lonely, anchors, neighbours) is None
    # And where the budget would leave too few rows a cluster.
    monkeypatch.setattr(vote, "TRAINING_MULTIPLY_ADDS", 10**6)
    assert voted_head(features, labels, anchors, neighbours) is None
