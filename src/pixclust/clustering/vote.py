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
ACC 0.797-0.800 / NMI 0.743-0.745 -> 0.804-0.808 / 0.747-0.751 (seeds 0-2).

An outlier keeps its cluster in the vote, and the head learns it there: its
nearest neighbours are only the images least unlike it, not its kind, and the
refinement's head, which learnt from all the images, placed it better.
Unguarded, the vote took a darkened copy of a photo crop, whose neighbours were
half its photo's crops and half the darker crops of another photo, away from
its photo.
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
# An anchor whose mean distance to its voters is more than this many robust standard deviations (1.4826 x the
# median absolute deviation) above the median anchor's keeps its cluster in the vote. Fashion-MNIST's test set: 10
# of 10,000 anchors held, ACC / NMI 0.806 / 0.748 -> 0.805 / 0.747; at 2: 171 held, 0.805 / 0.748; the digits: none held.
OUTLIER_SPREADS = 3.0
# Anchors whose distances to their voters are measured at once (10 x 128 floats each).
DISTANCE_CHUNK = 8192
# Rows assigned by the head at once: all N x k scores at once would be 4 GB for a million images and k = 1000.
ASSIGN_CHUNK = 100_000


def neighbour_vote(
    labels: np.ndarray, anchors: np.ndarray, neighbours: np.ndarray, *, settled: np.ndarray | None = None
) -> np.ndarray:
    """``labels`` after each of the rows ``anchors`` takes the cluster most of its ``VOTE_NEIGHBOURS`` nearest are in.

    ``neighbours`` holds, for each anchor, row ids of its nearest other rows, nearest first (-1 pads), as
    :func:`pixclust.clustering.refine.anchor_neighbours` gives them; the neighbours must be anchors
    themselves. All anchors vote at once, round after round, until none moves or ``VOTE_ROUNDS`` have
    passed. Rows that are not anchors, and anchors where ``settled`` (one flag per anchor) is true, keep
    their labels; the latter still count in their neighbours' votes.
    """
    voted = np.asarray(labels, dtype=np.int64).copy()
    n_clusters = int(voted.max()) + 1
    near = neighbours[:, :VOTE_NEIGHBOURS]
    present = near >= 0
    voters = near[present]
    voter_of = np.repeat(np.arange(len(anchors)) * n_clusters, present.sum(axis=1))
    own_slot = np.arange(len(anchors)) * n_clusters
    movable = np.ones(len(anchors), dtype=bool) if settled is None else ~np.asarray(settled, dtype=bool)
    for _ in range(VOTE_ROUNDS):
        votes = np.bincount(voter_of + voted[voters], minlength=len(anchors) * n_clusters).astype(np.float32)
        votes[own_slot + voted[anchors]] += OWN_VOTE
        chosen = np.where(movable, votes.reshape(len(anchors), n_clusters).argmax(axis=1), voted[anchors])
        if np.array_equal(chosen, voted[anchors]):
            break
        voted[anchors] = chosen
    return voted


def isolated_anchors(features: np.ndarray, anchors: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """One flag per anchor: true where its voters are far off (``OUTLIER_SPREADS``), so that the vote leaves it.

    The yardstick is each anchor's mean Euclidean distance in ``features`` to its ``VOTE_NEIGHBOURS`` nearest,
    set against the median and the median absolute deviation of that distance over all anchors.
    """
    near = neighbours[:, :VOTE_NEIGHBOURS]
    spread = np.empty(len(anchors), dtype=np.float64)
    for start in range(0, len(anchors), DISTANCE_CHUNK):
        rows, voters = anchors[start : start + DISTANCE_CHUNK], near[start : start + DISTANCE_CHUNK]
        distances = np.linalg.norm(features[rows][:, None, :] - features[np.maximum(voters, 0)], axis=2)
        present = voters >= 0
        spread[start : start + DISTANCE_CHUNK] = np.where(present, distances, 0.0).sum(axis=1) / np.maximum(
            present.sum(axis=1), 1
        )
    middle = np.median(spread)
    # Where most anchors sit on copies of themselves the deviation is 0 and every anchor further off stays put:
    # the vote then moves less, never more.
    deviation = 1.4826 * np.median(np.abs(spread - middle))
    return spread > middle + OUTLIER_SPREADS * deviation


def voted_head(
    features: np.ndarray,
    labels: np.ndarray,
    anchors: np.ndarray,
    neighbours: np.ndarray,
    *,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A linear head (weight d x k, bias k) for the clusters the anchors' neighbours vote for; None to keep ``labels``.

    Outliers among the anchors (:func:`isolated_anchors`) keep their clusters in the vote. None where the vote moves
    no image, where it or the head would leave a cluster empty, or where the
    budget (``refine.TRAINING_MULTIPLY_ADDS``) allows fewer than ``HEAD_ROWS_PER_CLUSTER`` rows a cluster.
    """
    n_clusters = int(labels.max()) + 1
    voted = neighbour_vote(labels, anchors, neighbours, settled=isolated_anchors(features, anchors, neighbours))
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
