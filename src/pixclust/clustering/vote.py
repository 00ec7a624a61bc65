"""After the refinement: each image takes the cluster of most of its nearest neighbours, and a linear head learns that.

The refinement's head is linear in the features, so its clusters meet along
hyperplanes, and an image just across one from its own kind keeps the wrong
cluster. A vote of each image's 10 nearest neighbours (half a vote more for
the cluster it is in, so that a tie keeps it there), repeated until no image
moves, takes such images over: 7% of Fashion-MNIST's test set. A
multinomial logistic regression (scikit-learn's) fitted to the voted clusters
then becomes the head that assigns every image and places new ones, so that a
run's own images and the images ``pixclust add`` places later go by one rule;
it agrees with the vote on 96% of the images. Measured on the same features as
the default (``--k 10``; docs/QUALITY.md): Fashion-MNIST's 10,000 test images
ACC 0.797-0.798 / NMI 0.744 -> 0.804-0.806 / 0.748 (seeds 0-1).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from pixclust.clustering.refine import TRAINING_MULTIPLY_ADDS

VOTE_NEIGHBOURS = 10
# A cluster's own vote: half a neighbour's, so it decides only a tie.
OWN_VOTE = 0.5
# Rounds of voting at most; on Fashion-MNIST's test set 1-3 images still move after 10 (0.03%).
VOTE_ROUNDS = 10
HEAD_ITERATIONS = 200
# The head is fitted within the refinement's own budget of multiply-adds, on a sample of the anchors where it
# must be, and not at all where that would leave fewer than this many rows a cluster (k above 98 with 128 features).
HEAD_ROWS_PER_CLUSTER = 50
# Rows assigned by the head at once: all N x k scores at once would be 4 GB for a million images and k = 1000.
ASSIGN_CHUNK = 100_000


def neighbour_vote(labels: np.ndarray, anchors: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``labels`` after each of the rows ``anchors`` takes the cluster most of its ``VOTE_NEIGHBOURS`` nearest are in.

    ``neighbours`` holds, for each anchor, row ids of its nearest other rows, nearest first (-1 pads), as
    :func:`pixclust.clustering.refine.anchor_neighbours` gives them; the neighbours must be anchors
    themselves. All anchors vote at once, round after round, until none moves or ``VOTE_ROUNDS`` have
    passed. Rows that are not anchors keep their labels.
    """
    voted = np.asarray(labels, dtype=np.int64).copy()
    n_clusters = int(voted.max()) + 1
    near = neighbours[:, :VOTE_NEIGHBOURS]
    present = near >= 0
    voters = near[present]
    voter_of = np.repeat(np.arange(len(anchors)) * n_clusters, present.sum(axis=1))
    own_slot = np.arange(len(anchors)) * n_clusters
    for _ in range(VOTE_ROUNDS):
        votes = np.bincount(voter_of + voted[voters], minlength=len(anchors) * n_clusters).astype(np.float32)
        votes[own_slot + voted[anchors]] += OWN_VOTE
        chosen = votes.reshape(len(anchors), n_clusters).argmax(axis=1)
        if np.array_equal(chosen, voted[anchors]):
            break
        voted[anchors] = chosen
    return voted


def voted_head(
    features: np.ndarray,
    labels: np.ndarray,
    anchors: np.ndarray,
    neighbours: np.ndarray,
    *,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A linear head (weight d x k, bias k) for the clusters the anchors' neighbours vote for; None to keep ``labels``.

    None where the vote moves no image, where it or the head would leave a cluster empty, or where the
    budget (``refine.TRAINING_MULTIPLY_ADDS``) allows fewer than ``HEAD_ROWS_PER_CLUSTER`` rows a cluster.
    """
    n_clusters = int(labels.max()) + 1
    voted = neighbour_vote(labels, anchors, neighbours)
    if np.array_equal(voted[anchors], labels[anchors]) or len(np.unique(voted[anchors])) < n_clusters:
        return None
    rows = _head_rows(anchors, features.shape[1], n_clusters, random_state)
    if rows is None:
        return None
    with warnings.catch_warnings():
        # A head stopped at HEAD_ITERATIONS assigns as well as a converged one for this use; it is not a probability model.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=HEAD_ITERATIONS, random_state=random_state).fit(features[rows], voted[rows])
    weight, bias = model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32)
    if n_clusters == 2:
        # scikit-learn keeps one column for two classes: the second class wins where it is positive.
        weight, bias = np.hstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias]).astype(np.float32)
    if len(np.unique(np.argmax(features[rows] @ weight + bias, axis=1))) < n_clusters:
        return None
    return weight, bias


def _head_rows(anchors: np.ndarray, dims: int, n_clusters: int, random_state: int) -> np.ndarray | None:
    """The anchors the head is fitted on: all, or a fixed sample where the budget calls for fewer; None for too few."""
    affordable = TRAINING_MULTIPLY_ADDS // (4 * dims * n_clusters * HEAD_ITERATIONS)
    if affordable < HEAD_ROWS_PER_CLUSTER * n_clusters:
        return None
    if len(anchors) <= affordable:
        return anchors
    return np.sort(np.random.default_rng(random_state).choice(anchors, size=affordable, replace=False))


def head_labels(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Each row's cluster by the head: the column of ``features @ weight + bias`` that scores highest."""
    labels = np.empty(len(features), dtype=np.int64)
    for start in range(0, len(features), ASSIGN_CHUNK):
        labels[start : start + ASSIGN_CHUNK] = np.argmax(features[start : start + ASSIGN_CHUNK] @ weight + bias, axis=1)
    return labels
