"""Labelling by example when most images may belong to no class: clusters claimed by the examples.

A few examples per class and a large unlabelled rest is positive-unlabelled
learning, and the rest is the best sample of what "none" looks like. The
labeller reasons over the run's own clusters (``structure.py``):

1. **Claims.** A cluster belongs to class c when it holds more of c's
   positives (examples, and images answered as c) than of any other class,
   and at least ``min_share`` of them. Answers about images drawn from a
   cluster (``suggest``) speak for it, where a chosen example need not: two
   more "c" than "not c" claim a cluster, two more "not c" than "c" take a
   claim back. Every image of a claimed cluster gets its class; the others
   get "none". A stray example at the edge of another group (one of five in
   a cluster of the wrong kind) does not drag that whole group in.
2. **Is anything "none"?** If every image belonged to a class, clusters would
   receive examples in proportion to their size. When the clusters no example
   reached hold no more of the collection than that chance explains (and
   under a quarter of it) and the claimed clusters hold at least half of it,
   nothing is "none" and every image takes the class propagation gives it
   (the ``--no-none`` behaviour, chosen without being asked).
3. **Confidence.** Per class, a logistic regression of its positives against
   the whole collection, scaled so held-out positives score 1 on average
   (Elkan and Noto 2008: under random selection of the labelled positives
   that ratio is P(class | image)). It gives each image's confidence, the
   order in which ``suggest`` visits unclaimed clusters, and the expected
   precision.
4. **Expected precision and recall, without labels.** Recall: the share of a
   class's positives whose cluster the other positives still claim
   (leave-one-out). Precision: the mean confidence of the images the class
   took (answers are among the positives and negatives it is fitted to).

Why clusters and not image-by-image rules: measured on Fashion-MNIST, the
digits and photo crops with 70-90% "none" (bench/label.py, docs/LABEL.md),
the nearest-example rule at its best threshold reached known-class F1 0.59 /
0.62 / 0.89, label propagation with per-class cuts 0.47 / 0.53 / 0.56, and
claimed clusters 0.63 / 0.94 / 0.86.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pixclust.labelling.feedback import Feedback
from pixclust.labelling.label import NONE_LABEL, ExampleLabeller, References

DEFAULT_MIN_SHARE = 0.3
# The most of the collection that clusters no positive reached may hold when nothing is "none".
MAX_UNREACHED = 0.25
# The least of the collection the claimed clusters hold when nothing is "none".
MIN_CLAIMED = 0.5
# Unreached clusters may hold this many times the share of the collection that chance leaves unreached
# before the rest is called "none".
CHANCE_FACTOR = 2.0
# Plus this share of the collection, so a handful of examples over many small clusters is not read as "none".
CHANCE_SLACK = 0.05
# Images drawn from each claimed cluster, and from each unclaimed one, per round of suggestions.
SUGGESTED_PER_CLAIM = 2
SUGGESTED_PER_UNCLAIMED = 2
# Answers for a class minus answers against it that claim a cluster (or, negated, take a claim back).
ANSWER_MARGIN = 2
# Strong regularisation: the positives are few, the features many.
PU_REGULARIZATION = 0.1
# Held-out folds of the positives for the Elkan-Noto scale (leave-one-out when there are fewer).
PU_FOLDS = 5


@dataclass(frozen=True)
class ClassEstimate:
    """What the data alone says of one class's labels: expected precision and recall, and how they were had."""

    name: str
    n_labelled: int
    precision: float
    recall: float


class ClusterLabeller:
    """Labels every image from a few examples by the clusters they claim; "none" for the rest when there is a rest.

    After :meth:`fit`: ``labels_`` (class index, or -1), ``scores_`` (N x C
    estimated P(class | image)), ``clusters_`` (the groups it was given),
    ``claims_`` (cluster id -> class index),
    ``none_present_`` (False when the examples covered every cluster as far as
    chance allows, so every image got a class) and ``estimates_`` (one
    :class:`ClassEstimate` per class). ``all_labelled=True`` is the user saying
    that nothing is "none" (``--no-none``).
    """

    def __init__(
        self, *, min_share: float = DEFAULT_MIN_SHARE, all_labelled: bool = False, random_state: int = 0
    ) -> None:
        self.min_share = min_share
        self.all_labelled = all_labelled
        self.random_state = random_state

    def fit(
        self, features: np.ndarray, clusters: np.ndarray, refs: References, feedback: Feedback | None = None
    ) -> ClusterLabeller:
        feedback = feedback or Feedback()
        n_classes = len(refs.class_names)
        features = np.asarray(features, np.float32)
        rows, classes = _positives(refs, feedback)
        negatives = feedback.negative

        self.clusters_ = np.asarray(clusters)
        self.scores_ = _pu_scores(features, rows, classes, negatives, n_classes, self.random_state)
        self.claims_ = self._claims(clusters, rows, classes, feedback, n_classes)
        self.none_present_ = not self.all_labelled and _none_present(clusters, rows, self.claims_)
        if self.none_present_:
            labels = np.full(len(features), NONE_LABEL, np.int64)
            for cluster, cls in self.claims_.items():
                labels[clusters == cluster] = cls
        else:
            labels = self._everything(features, rows, classes, refs.class_names)
        # What the user said about an image outranks its cluster.
        for row, cls in negatives:
            if labels[row] == cls or cls == NONE_LABEL:
                labels[row] = NONE_LABEL
        labels[rows] = classes
        self.labels_ = labels
        self.estimates_ = [self._estimate(c, name, clusters, rows, classes) for c, name in enumerate(refs.class_names)]
        return self

    def _claims(
        self, clusters: np.ndarray, rows: np.ndarray, classes: np.ndarray, feedback: Feedback, n_classes: int
    ) -> dict[int, int]:
        """Cluster id -> the class that claims it (see the module's step 1).

        Answers about a cluster's images outvote the examples there: the examples were chosen, the suggested
        images were drawn from the cluster at random, so they say how much of it is the class.
        """
        n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
        positive, yes, no = (np.zeros((max(n_clusters, 1), n_classes)) for _ in range(3))
        in_cluster = clusters[rows] >= 0
        np.add.at(positive, (clusters[rows][in_cluster], classes[in_cluster]), 1)
        for row, cls in feedback.positive:
            if clusters[row] >= 0:
                yes[clusters[row], cls] += 1
        for row, cls in feedback.negative:
            if clusters[row] >= 0:
                no[clusters[row], slice(None) if cls == NONE_LABEL else cls] += 1
        totals = np.bincount(classes, minlength=n_classes)
        claims = {}
        for cluster in range(n_clusters):
            best = int(np.argmax(positive[cluster]))
            count = positive[cluster, best]
            said = yes[cluster, best] - no[cluster, best]
            by_examples = count > 0 and count >= self.min_share * totals[best]
            # Two more answers for than against claim a cluster, two more against take a claim back: one
            # image drawn from an impure cluster says little.
            if (by_examples and said > -ANSWER_MARGIN) or said >= ANSWER_MARGIN:
                claims[cluster] = best
        return claims

    def suggest(self, n: int, known: Sequence[int], *, random_state: int = 0) -> list[int]:
        """``n`` rows worth an answer: images drawn from each claimed cluster (is it all the class?), then two
        drawn from each unclaimed cluster (is it a class after all?), the clusters most like a class first.

        Drawn at random, not the most class-like: answers then speak for their cluster, so two "yes" may
        claim it.

        Measured against suggesting the most uncertain images: one round of 20 answers added 0.011 F1 and
        0.10 precision on Fashion-MNIST where the uncertain ones cost 0.03 F1 (bench/label.py's settings).
        """
        rng = np.random.default_rng(random_state)
        taken = set(int(row) for row in known)
        picks: list[int] = []

        def free(cluster: int) -> np.ndarray:
            members = np.flatnonzero(self.clusters_ == cluster)
            return np.array([row for row in members if row not in taken], dtype=np.int64)

        claimed = sorted(self.claims_, key=lambda cluster: -np.sum(self.clusters_ == cluster))
        for _ in range(SUGGESTED_PER_CLAIM):
            for cluster in claimed:
                members = free(cluster)
                if len(members) and len(picks) < (n + 1) // 2:
                    picks.append(int(rng.choice(members)))
                    taken.add(picks[-1])
        unclaimed = sorted(set(self.clusters_.tolist()) - set(self.claims_) - {-1})
        closeness = {}
        for cluster in unclaimed:
            members = free(cluster)
            if len(members):
                closeness[cluster] = float(np.mean(self.scores_[members].max(axis=1)))
        for cluster in sorted(closeness, key=closeness.__getitem__, reverse=True):
            members = free(cluster)
            picks += [
                int(row) for row in rng.choice(members, min(SUGGESTED_PER_UNCLAIMED, len(members)), replace=False)
            ]
        return picks[:n]

    def _everything(self, features: np.ndarray, rows: np.ndarray, classes: np.ndarray, names: list[str]) -> np.ndarray:
        """A class for every image: label propagation from the positives without a "none" cut."""
        positives = References(list(names), features[rows], classes, list(rows))
        return ExampleLabeller(estimate_none=False, random_state=self.random_state).fit(features, positives).labels_

    def _estimate(
        self, cls: int, name: str, clusters: np.ndarray, rows: np.ndarray, classes: np.ndarray
    ) -> ClassEstimate:
        taken = np.flatnonzero(self.labels_ == cls)
        unknown = np.setdiff1d(taken, rows)
        precision = float(np.mean(self.scores_[unknown, cls])) if len(unknown) else 1.0
        return ClassEstimate(name, len(taken), precision, self._loo_recall(cls, clusters, rows, classes))

    def _loo_recall(self, cls: int, clusters: np.ndarray, rows: np.ndarray, classes: np.ndarray) -> float:
        """The share of the class's positives whose cluster the others would still give the class."""
        mine = rows[classes == cls]
        if len(mine) < 2:
            return float("nan")
        if not self.none_present_:
            return 1.0
        kept = 0
        for drop in range(len(mine)):
            others = np.delete(mine, drop)
            counts = np.bincount(clusters[others][clusters[others] >= 0], minlength=int(clusters.max()) + 1)
            cluster = clusters[mine[drop]]
            if cluster >= 0 and counts[cluster] > 0 and counts[cluster] >= self.min_share * len(others):
                kept += 1
        return kept / len(mine)


def _positives(refs: References, feedback: Feedback) -> tuple[np.ndarray, np.ndarray]:
    """Rows and classes of every known positive: the examples in the collection, then the answers."""
    pairs = [(row, int(cls)) for row, cls in zip(refs.rows, refs.classes, strict=True) if row is not None]
    seen = {row for row, _ in pairs}
    pairs += [(row, cls) for row, cls in feedback.positive if row not in seen]
    rows = np.array([row for row, _ in pairs], dtype=np.int64)
    return rows, np.array([cls for _, cls in pairs], dtype=np.int64)


def _none_present(clusters: np.ndarray, rows: np.ndarray, claims: dict[int, int]) -> bool:
    """Whether some images are of no class: the clusters no positive reached hold more of the collection than
    chance would leave unreached, or the claimed clusters hold under half of it.

    If every image belonged to a class, a cluster holding a share s of the collection would receive none of
    E positives with probability (1 - s)^E. With few positives chance explains almost anything, so the
    unreached share must also stay under ``MAX_UNREACHED``; and positives scattered over impure clusters
    reach many without claiming them. "None" is the answer that keeps precision.
    """
    n = len(clusters)
    if n == 0:
        return False
    sizes = np.bincount(clusters[clusters >= 0], minlength=int(clusters.max()) + 1)
    shares = sizes / n
    chance = float(np.sum(shares * (1 - shares) ** len(rows)))
    reached = set(clusters[rows].tolist())
    unreached = float(sum(share for cluster, share in enumerate(shares) if cluster not in reached))
    unreached += float(np.mean(clusters < 0))
    claimed = float(sum(shares[cluster] for cluster in claims))
    return unreached > min(CHANCE_FACTOR * chance + CHANCE_SLACK, MAX_UNREACHED) or claimed < MIN_CLAIMED


def _pu_scores(
    features: np.ndarray,
    rows: np.ndarray,
    classes: np.ndarray,
    negatives: Sequence[tuple[int, int]],
    n_classes: int,
    random_state: int,
) -> np.ndarray:
    """N x C estimated P(class | image): each class's positives against the collection, Elkan-Noto scaled."""
    scores = np.zeros((len(features), n_classes), np.float32)
    for cls in range(n_classes):
        positives = rows[classes == cls]
        if len(positives) == 0:
            continue
        said_not = np.array([row for row, c in negatives if c in (cls, NONE_LABEL)], dtype=np.int64)
        raw = _fit_positive_unlabelled(features, positives, said_not, random_state)
        scale = _held_out_mean(features, positives, said_not, random_state)
        scores[:, cls] = np.clip(raw.predict_proba(features)[:, 1] / scale, 0, 1)
    return scores


def _fit_positive_unlabelled(features: np.ndarray, positives: np.ndarray, said_not: np.ndarray, random_state: int):
    """Logistic regression of the positives (weighted to balance) against every other image."""
    from sklearn.linear_model import LogisticRegression

    target = np.zeros(len(features), np.int64)
    target[positives] = 1
    weight = np.ones(len(features))
    weight[positives] = max((len(features) - len(positives)) / len(positives), 1.0)
    # An image answered "not this class" is a sure negative, worth as much as a positive.
    weight[said_not] = weight[positives[0]]
    model = LogisticRegression(C=PU_REGULARIZATION, max_iter=1000, random_state=random_state)
    return model.fit(features, target, sample_weight=weight)


def _held_out_mean(features: np.ndarray, positives: np.ndarray, said_not: np.ndarray, random_state: int) -> float:
    """Mean score of positives the model did not see (Elkan and Noto's c); 1 with a single positive."""
    if len(positives) < 2:
        return 1.0
    folds = np.array_split(np.random.default_rng(random_state).permutation(positives), min(PU_FOLDS, len(positives)))
    held = []
    for fold in folds:
        model = _fit_positive_unlabelled(features, np.setdiff1d(positives, fold), said_not, random_state)
        held.extend(model.predict_proba(features[fold])[:, 1])
    return float(max(np.mean(held), 1e-6))
