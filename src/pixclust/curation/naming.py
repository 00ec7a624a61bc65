"""What each cluster shows, in words: the ImageNet classes common in the cluster and rare elsewhere.

Every image's class probabilities (the network's own classifier,
:mod:`pixclust.embedding.class_head`) are averaged per cluster. A class
describes a cluster as tf-idf describes a document: by how probable it is
there, times the log of how much more probable than in the rest of the
collection, so "jersey" names a cluster of T-shirts rather than every
cluster of clothes. The cluster takes its best class's name, and the
runner-up's where it scores at least half as well ("tabby / tiger cat").
The confidence is the share of the cluster's images that have the named
class among their five most probable. No class describes the cluster, and it
stays "unnamed", when that share is under a third, or when the class is not
at least ten times as probable in the cluster as in the rest: the network
then sees the same few things everywhere, as it does in handwritten digits
(scikit-learn's: "corkscrew" led three of ten clusters, at most 9.8 times as
probable inside as out, where named photo clusters measured 48 times and more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pixclust.embedding.class_head import ClassHead

UNNAMED = "unnamed"
# Below this share of images with the class in their top five, a class does not describe the cluster.
MIN_CONFIDENCE = 1 / 3
# A class names a cluster only when it is at least this many times as probable there as in the rest.
MIN_LIFT = 10.0
# The runner-up joins the name when it scores at least this share of the best class's score.
RUNNER_UP_SHARE = 0.5
TOP = 5


@dataclass(frozen=True)
class ClusterName:
    """A cluster's name (``UNNAMED`` when no class describes it), its classes, and the share of images with them."""

    name: str
    classes: tuple[str, ...]
    confidence: float


def name_clusters(head: ClassHead, vectors: np.ndarray, labels: np.ndarray) -> dict[int, ClusterName]:
    """A name for each cluster id in ``labels`` (noise and novel images, -1, are not named)."""
    labels = np.asarray(labels)
    ids = sorted(int(label) for label in np.unique(labels) if label >= 0)
    if not ids:
        return {}
    row_of = {label: row for row, label in enumerate(ids)}
    n_classes = len(head.class_names)
    summed = np.zeros((len(ids), n_classes))
    in_top = np.zeros((len(ids), n_classes))
    start = 0
    for probabilities in head.probabilities(vectors):
        chunk = labels[start : start + len(probabilities)]
        start += len(probabilities)
        top = np.argpartition(-probabilities, TOP - 1, axis=1)[:, :TOP]
        for label in np.unique(chunk):
            if label < 0:
                continue
            members = chunk == label
            summed[row_of[int(label)]] += probabilities[members].sum(axis=0)
            np.add.at(in_top[row_of[int(label)]], top[members].ravel(), 1)
    sizes = np.array([np.count_nonzero(labels == label) for label in ids], dtype=np.float64)
    inside = summed / sizes[:, None]
    outside_sizes = np.count_nonzero(labels >= 0) - sizes
    outside = np.where(
        outside_sizes[:, None] > 0,
        (summed.sum(axis=0) - summed) / np.maximum(outside_sizes, 1)[:, None],
        1.0 / n_classes,
    )
    tiny = 1e-6
    scores = inside * np.log((inside + tiny) / (outside + tiny))
    lift = (inside + tiny) / (outside + tiny)
    return {
        label: _name(scores[row], lift[row], in_top[row] / sizes[row], head.class_names)
        for label, row in row_of.items()
    }


def _name(scores: np.ndarray, lift: np.ndarray, shares: np.ndarray, class_names: tuple[str, ...]) -> ClusterName:
    best, runner_up = np.argsort(-scores)[:2]
    confidence = float(shares[best])
    if not _describes(best, lift, shares):
        return ClusterName(UNNAMED, (), confidence)
    classes = [best]
    if scores[runner_up] >= RUNNER_UP_SHARE * scores[best] and _describes(runner_up, lift, shares):
        classes.append(runner_up)
    names = tuple(class_names[index] for index in classes)
    return ClusterName(" / ".join(names), names, confidence)


def _describes(index: int, lift: np.ndarray, shares: np.ndarray) -> bool:
    return bool(shares[index] >= MIN_CONFIDENCE and lift[index] >= MIN_LIFT)
