"""Refinement of a clustering so that nearest neighbours agree (SCAN-style, on frozen features).

k-means draws straight boundaries between centres; the images on the wrong
side of a boundary are often ones whose nearest neighbours sit in another
cluster. A linear softmax head over the features, started from the k-means
solution itself, is trained to give each image and a random one of its
neighbours the same cluster (the SCAN consistency loss of Van Gansbeke et al.
2020) while an entropy term on the mean assignment keeps every cluster in use.
Starting from k-means rather than from random weights keeps the refinement a
small, stable correction: measured here it adds 1-3 points of accuracy on both
Fashion-MNIST and the digits, where randomly started heads vary by ±10 points.

k-means itself can land in either of two solutions whose inertia differs by
less than 0.1%, and which one it finds turns on rounding: on the
Fashion-MNIST test set the bf16 embedding's best start gave ACC 0.756 after
refinement and the fp32 embedding's (cosine 0.997 to it) 0.677.
``refine_best`` therefore refines each such start and keeps the one the
refinement's own objective prefers (there 0.287 against 0.332 consistency
loss), which picked the better solution from both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pixclust.errors import UsageError
from pixclust.index import VectorIndex

DEFAULT_NEIGHBOURS = 20
DEFAULT_EPOCHS = 30
# SCAN's entropy weight for 10 clusters; large enough that no cluster empties.
BALANCE_WEIGHT = 5.0
# Sharpness of the head's starting softmax: at 10 the k-means assignment is kept for all but boundary images.
START_TEMPERATURE = 10.0
LEARNING_RATE = 1e-2
BATCH_SIZE = 512
# An epoch counts at most this many images: a linear head has long converged by then, and a
# million-image run then trains as long as a 50,000-image one.
EPOCH_IMAGES_MAX = 50_000
# Rows whose probabilities are held at once (rows x heads x k floats): 64 MB.
PROBABILITIES_CHUNK = 16_000_000
# Neighbour pairs the final objective is measured on: the same pairs for every start, so the
# objectives compare, and enough that their standard error is far below the gaps between starts.
OBJECTIVE_PAIRS = 200_000
# Rows the objective's balance term (the entropy of the mean assignment) is measured on: every row up to
# this many, a fixed sample above, so that a million-row run does not assign every row once per rival.
OBJECTIVE_ROWS = 200_000
# Rows whose neighbours the refinement learns from: every row up to this many, above it a fixed sample,
# whose neighbours are found within the sample. The heads see at most 30 epochs of EPOCH_IMAGES_MAX images
# (far fewer with hundreds of clusters), so a million-row run needs no index of every row nor the search of
# every row's neighbours, which took 449 of its 1,043 s (cProfile, busy machine); with this sample and the
# other changes of issue 18, its ARI against bench/scale.py's blobs read 0.975 against 0.978 before.
ANCHOR_ROWS = 100_000
# Multiply-adds the heads' training may take (4 products of BATCH_SIZE x d by d x (heads x k) a step):
# with k = 10 never reached (70,000 Fashion-MNIST images, three heads: 23 billion), with k = 1,000
# on 128 dimensions it allows 190 of one head's 2,910 steps (a million rows: 762 steps, 70 s of a busy
# machine's 549, under the 4 times larger limit before).
TRAINING_MULTIPLY_ADDS = 50_000_000_000


def nearest_neighbours(X: np.ndarray, n_neighbors: int, *, random_state: int = 0) -> np.ndarray:
    """N x n_neighbors row ids of each row's most cosine-similar other rows (faiss; IVF above 50,000 rows)."""
    n_neighbors = min(n_neighbors, len(X) - 1)
    _, ids = VectorIndex(X, random_state=random_state).search(X, n_neighbors + 1)
    own = np.arange(len(X))[:, None]
    # Drop each row itself (usually, but with exact ties not always, in first place); -1 pads short IVF lists.
    neighbours = np.where((ids == own) | (ids < 0), -1, ids)
    ordered = np.argsort(neighbours < 0, axis=1, kind="stable")
    return np.take_along_axis(neighbours, ordered, axis=1)[:, :n_neighbors]


@dataclass(frozen=True)
class Refinement:
    """Refined labels, the head's probability for each image's own cluster, the share of images that
    moved, and the trained head's objective (consistency loss minus the weighted balance entropy, on a
    fixed sample of neighbour pairs; lower is better). ``weight`` (d x k) and ``bias`` (k) are the head
    itself: ``argmax(X @ weight + bias)`` gives ``labels``, and places new rows of the same space
    (None where no head was trained)."""

    labels: np.ndarray
    confidence: np.ndarray
    changed: float
    objective: float
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def refine_clusters(
    X: np.ndarray,
    labels: np.ndarray,
    neighbours: np.ndarray,
    *,
    epochs: int = DEFAULT_EPOCHS,
    random_state: int = 0,
) -> Refinement:
    """Move boundary images to the cluster their neighbours agree on.

    ``X`` is N x d (the space the neighbours were found in), ``labels`` the
    starting clusters 0..k-1 (no noise), ``neighbours`` N x m row ids (-1 for
    none). Deterministic for a fixed ``random_state``.
    """
    refinement, _ = refine_best(X, [labels], neighbours, epochs=epochs, random_state=random_state)
    return refinement


def anchor_neighbours(X: np.ndarray, n_neighbors: int, *, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rows the refinement learns from (all up to ``ANCHOR_ROWS``, a fixed sample above), and their neighbours.

    Returns (anchors, neighbours): row ids in order, and for each anchor the ids
    of its most similar other anchors (-1 pads), ready for ``refine_best``.
    """
    if len(X) <= ANCHOR_ROWS:
        return np.arange(len(X)), nearest_neighbours(X, n_neighbors, random_state=random_state)
    anchors = np.sort(np.random.default_rng(random_state).choice(len(X), size=ANCHOR_ROWS, replace=False))
    within = nearest_neighbours(X[anchors], n_neighbors, random_state=random_state)
    return anchors, np.where(within >= 0, anchors[within], -1)


def refine_best(
    X: np.ndarray,
    starts: list[np.ndarray],
    neighbours: np.ndarray,
    *,
    anchors: np.ndarray | None = None,
    epochs: int = DEFAULT_EPOCHS,
    random_state: int = 0,
) -> tuple[Refinement, int]:
    """Refine each starting clustering and return the refinement with the lowest objective, and its start's index.

    ``neighbours`` holds row ids of the neighbours of the rows ``anchors``
    (default: of every row), one line each. The starts share ``X`` and ``neighbours``: every head trains on the same
    neighbour pairs, drawn once, and its objective is measured on the same
    sample of pairs, which is what makes the objectives comparable. The heads
    train together, as one matrix product per step, for at most
    ``TRAINING_MULTIPLY_ADDS`` (a limit only hundreds of clusters reach), and
    only the chosen head assigns every row.
    """
    if not starts:
        raise UsageError("refine_best needs at least one starting clustering")
    features = np.ascontiguousarray(X, dtype=np.float32)
    starts = [np.asarray(labels) for labels in starts]
    anchor_ids = np.arange(len(features)) if anchors is None else np.asarray(anchors)
    if len(neighbours) != len(anchor_ids) or any(len(labels) != len(features) for labels in starts):
        raise UsageError("features and labels must have one row per image, neighbours one per anchor")
    if any(labels.min() < 0 for labels in starts):
        raise UsageError("refinement needs every image in a cluster; noise (-1) cannot be refined")
    pairs_from, pairs_to = np.nonzero(neighbours >= 0)
    cluster_counts = {int(labels.max()) + 1 for labels in starts}
    if len(cluster_counts) > 1:
        raise UsageError("the starting clusterings given to refine_best must have the same number of clusters")
    if cluster_counts.pop() < 2 or len(pairs_from) == 0:
        return Refinement(starts[0].copy(), np.ones(len(features), dtype=np.float32), 0.0, float("nan")), 0
    pair_anchors = anchor_ids[pairs_from]
    partners = neighbours[pairs_from, pairs_to]
    heads = _SoftmaxHeads.from_centres(features, starts)
    rng = np.random.default_rng(random_state)
    steps_per_epoch = max(1, min(len(features), EPOCH_IMAGES_MAX) // BATCH_SIZE)
    step_cost = 4 * BATCH_SIZE * features.shape[1] * heads.weight.shape[1]
    for _ in range(min(epochs * steps_per_epoch, max(1, TRAINING_MULTIPLY_ADDS // step_cost))):
        pick = rng.integers(0, len(pair_anchors), BATCH_SIZE)
        heads.step(features[pair_anchors[pick]], features[partners[pick]])
    pairs = np.random.default_rng(0).choice(
        len(pair_anchors), size=min(len(pair_anchors), OBJECTIVE_PAIRS), replace=False
    )
    rows = (
        np.arange(len(features))
        if len(features) <= OBJECTIVE_ROWS
        else np.sort(np.random.default_rng(0).choice(len(features), size=OBJECTIVE_ROWS, replace=False))
    )
    objectives = heads.objectives(features[pair_anchors[pairs]], features[partners[pairs]], features[rows])
    chosen = int(np.argmin(np.where(np.isfinite(objectives), objectives, np.inf)))
    refined, confidence = heads.assign(features, chosen)
    changed = float(np.mean(refined != starts[chosen]))
    weight, bias = heads.head(chosen)
    return Refinement(refined, confidence, changed, float(objectives[chosen]), weight, bias), chosen


class _SoftmaxHeads:
    """S linear softmax heads over the same d features, trained as one d x (S k) matrix with Adam.

    The gradient is written out (softmax cross-terms of the consistency loss and
    of the balance entropy), which on a head this small is several times
    faster than an autograd framework's bookkeeping, and keeps torch out of
    clustering.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, weight: np.ndarray, bias: np.ndarray, n_heads: int) -> None:
        self.weight, self.bias, self.n_heads = weight, bias, n_heads
        self.k = bias.shape[0] // n_heads
        self.moments = [np.zeros_like(weight), np.zeros_like(weight), np.zeros_like(bias), np.zeros_like(bias)]
        self.steps = 0

    @classmethod
    def from_centres(cls, features: np.ndarray, starts: list[np.ndarray]) -> _SoftmaxHeads:
        """Heads whose softmax is that of -T x squared distance to each start's cluster centres."""
        from scipy.sparse import csr_matrix

        columns, biases = [], []
        for labels in starts:
            k = int(labels.max()) + 1
            membership = csr_matrix(
                (np.ones(len(labels), dtype=np.float32), (labels, np.arange(len(labels)))), shape=(k, len(labels))
            )
            counts = np.bincount(labels, minlength=k)
            centres = np.asarray(membership @ features) / np.maximum(counts, 1)[:, None].astype(np.float32)
            columns.append(2 * START_TEMPERATURE * centres.T)
            biases.append(-START_TEMPERATURE * (centres * centres).sum(axis=1))
        return cls(np.ascontiguousarray(np.hstack(columns)), np.concatenate(biases).astype(np.float32), len(starts))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """S x len(rows) x k softmax probabilities of every head."""
        logits = (rows @ self.weight + self.bias).reshape(len(rows), self.n_heads, self.k).transpose(1, 0, 2)
        logits -= logits.max(axis=2, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=2, keepdims=True)
        return logits

    def step(self, anchor_rows: np.ndarray, partner_rows: np.ndarray) -> None:
        """One Adam step on consistency loss minus BALANCE_WEIGHT x entropy of the mean assignment, per head."""
        batch = len(anchor_rows)
        anchor_p, partner_p = self.probabilities(anchor_rows), self.probabilities(partner_rows)
        agreement = (anchor_p * partner_p).sum(axis=2, keepdims=True)
        live = agreement > 1e-7  # the clamp in -log(max(agreement, 1e-7)) passes no gradient
        scale = np.where(live, -1.0 / (batch * np.maximum(agreement, 1e-7)), 0.0).astype(np.float32)
        mean_p = anchor_p.mean(axis=1, keepdims=True)
        # d/dm of m log(max(m, 1e-7)), as autograd takes it through the clamp.
        balance = (BALANCE_WEIGHT / batch) * (np.log(np.maximum(mean_p, 1e-7)) + (mean_p > 1e-7))
        grad_anchor_p = scale * partner_p + balance
        grad_partner_p = scale * anchor_p
        grad_anchor = anchor_p * (grad_anchor_p - (anchor_p * grad_anchor_p).sum(axis=2, keepdims=True))
        grad_partner = partner_p * (grad_partner_p - (partner_p * grad_partner_p).sum(axis=2, keepdims=True))
        flat_anchor = grad_anchor.transpose(1, 0, 2).reshape(batch, -1)
        flat_partner = grad_partner.transpose(1, 0, 2).reshape(batch, -1)
        grad_weight = anchor_rows.T @ flat_anchor + partner_rows.T @ flat_partner
        grad_bias = flat_anchor.sum(axis=0) + flat_partner.sum(axis=0)
        self.steps += 1
        self._adam(self.weight, grad_weight, self.moments[0], self.moments[1])
        self._adam(self.bias, grad_bias, self.moments[2], self.moments[3])

    def _adam(self, parameter: np.ndarray, grad: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
        beta1, beta2 = self.BETAS
        first *= beta1
        first += (1 - beta1) * grad
        second *= beta2
        second += (1 - beta2) * grad * grad
        step = LEARNING_RATE / (1 - beta1**self.steps)
        denominator = np.sqrt(second / (1 - beta2**self.steps)) + self.EPS
        parameter -= (step * first / denominator).astype(parameter.dtype)

    def _chunks(self, n_rows: int, n_heads: int) -> Iterator[slice]:
        size = max(1, PROBABILITIES_CHUNK // (n_heads * self.k))
        return (slice(begin, begin + size) for begin in range(0, n_rows, size))

    def objectives(self, anchor_rows: np.ndarray, partner_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Each head's consistency loss on the pairs minus BALANCE_WEIGHT x the entropy of its mean assignment on ``rows``."""
        log_agreement = np.zeros(self.n_heads)
        for part in self._chunks(len(anchor_rows), self.n_heads):
            agreement = (self.probabilities(anchor_rows[part]) * self.probabilities(partner_rows[part])).sum(axis=2)
            log_agreement += np.log(np.maximum(agreement, 1e-7)).sum(axis=1, dtype=np.float64)
        mean_p = np.zeros((self.n_heads, self.k))
        for part in self._chunks(len(rows), self.n_heads):
            mean_p += self.probabilities(rows[part]).sum(axis=1, dtype=np.float64)
        mean_p /= len(rows)
        entropy = -(mean_p * np.log(np.maximum(mean_p, 1e-12))).sum(axis=1)
        return -log_agreement / len(anchor_rows) - BALANCE_WEIGHT * entropy

    def head(self, head: int) -> tuple[np.ndarray, np.ndarray]:
        """Head ``head``'s weight (d x k) and bias (k), copies."""
        columns = slice(head * self.k, (head + 1) * self.k)
        return self.weight[:, columns].copy(), self.bias[columns].copy()

    def assign(self, features: np.ndarray, head: int) -> tuple[np.ndarray, np.ndarray]:
        """Head ``head``'s cluster for every row, and its probability."""
        single = _SoftmaxHeads(*self.head(head), 1)
        labels = np.empty(len(features), dtype=np.int64)
        confidence = np.empty(len(features), dtype=np.float32)
        # In chunks: all N x k probabilities at once would be 4 GB for a million images and k = 1000.
        for part in self._chunks(len(features), 1):
            probabilities = single.probabilities(features[part])[0]
            labels[part] = probabilities.argmax(axis=1)
            confidence[part] = probabilities.max(axis=1)
        return labels, confidence
