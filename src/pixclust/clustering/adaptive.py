"""The default pipeline: choose the representation and k without labels, cluster, then refine.

No fixed recipe suits every collection. A network trained on photos groups
clothing well but handwriting badly; gradient histograms (HOG) are the other
way round. Measured here (k-means on PCA-50, k = 10): Fashion-MNIST ACC 0.72
with the network's embedding alone against 0.57 with embedding + HOG; the
digits 0.55 against 0.95. What tells them apart without labels is how
*stable* each clustering is: run k-means from several seeds on a sample and
compare the runs (adjusted Rand index), at the k each candidate proposes. At
k = 10 the right representation scored 0.99 on both data sets, the wrong one
0.77-0.80.

The number of clusters (``k="auto"``) is chosen by the modularity of the
k-means partition on the k-nearest-neighbour graph (how many graph edges stay
inside clusters beyond what cluster sizes alone would give), taking the
smallest k within 1% of the best. Silhouette in PCA space, which the fixed
pipeline uses, picked 3-7 clusters on data with 10 classes; modularity picked
10-12.

Finally :mod:`pixclust.clustering.refine` lets nearest neighbours correct the k-means
boundaries, in the space of every view joined whichever was clustered, as long
as the views agree: an image's neighbours there must look alike to the network
and in their gradients, which on Fashion-MNIST made them share a class more
often and lifted NMI from 0.713 to 0.736 (the digits, where the joined views
are the ones clustered, are unchanged). Where HOG's own neighbours ignore the
clusters (``view_agreement`` below 0.6, as on crops of colour photos, where
joining HOG lowered NMI by 0.03-0.04) the refinement keeps to the chosen
features. k-means starts whose inertia is within 1% of the best but whose
clusterings differ are each refined, and the refinement with the lowest
objective is kept: near-equal inertias hide clusterings that score 0.68 and
0.76 ACC on Fashion-MNIST, and which start wins on inertia turns on rounding.
Last, :mod:`pixclust.clustering.vote` lets each image's nearest neighbours in that
space outvote the refinement's straight boundaries (outliers, whose neighbours are
far off, keep their clusters in it), and fits the head that assigns every image to the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from pixclust.clustering.clusterer import centres_and_distances, kmeans_starts, relabel_by_size
from pixclust.clustering.joined_pca import joined_pca
from pixclust.clustering.k_selection import GRAPH_NEIGHBOURS, KScan, check_k_settings, graph_modularity, scan_k
from pixclust.clustering.metrics import mean_silhouette, silhouette_values
from pixclust.clustering.placement import ClusterModel, FeatureSpace
from pixclust.clustering.reduce import Reduction, reduce_features
from pixclust.clustering.refine import DEFAULT_NEIGHBOURS, anchor_neighbours, nearest_neighbours, refine_best
from pixclust.clustering.stability import STABILITY_SAMPLE, choose_representation, clustering_stability
from pixclust.clustering.views import (
    EMBEDDING_VIEW,
    HANDMADE_VIEWS,
    HOG_VIEW,
    OUTLINE_VIEW,
    JoinedViews,
    view_means,
)
from pixclust.clustering.vote import head_labels, voted_head
from pixclust.errors import UsageError

# PCA components k-means and the refinement work in. With --k 10 over six seeds: Fashion-MNIST's
# test set ACC 0.769-0.772 / NMI 0.712-0.715 with 128 against 0.763-0.766 / 0.702-0.706 with 50
# (200 added 0.001-0.002 more); the digits 0.958-0.960 / 0.930-0.933 against 0.957-0.958 / 0.925-0.927.
PCA_COMPONENTS = 128
# The leading components that the choice of features and of k looks at: fewer make the k scan
# and the stability runs cheaper, and with all 128 (before the six-seed stability) --k auto
# moved further from 10 on both data sets.
SELECTION_COMPONENTS = 50
# Rows used to choose the representation and k; the final clustering uses every row.
SELECTION_SAMPLE = 10_000
# k-means starts per k in the scan. With 3, Fashion-MNIST's embedding proposed 10, 11 or 13 by
# seed (and 13 lost the choice of features: ACC 0.61); with 10 it proposed 11 at 5 of 6 seeds and
# 10 at the other, the digits 10 at every seed.
SCAN_STARTS = 10
# The refinement uses every view only where HOG's own neighbours keep at least this share of the
# clustering's modularity on the embedding's neighbours (``view_agreement``). Measured (10-NN graphs
# on 50 PCA components, k-means of the embedding at k = 10, three seeds each): Fashion-MNIST 0.90,
# where every view lifted NMI from 0.713 to 0.736; the digits 0.75-0.77, where embedding + HOG is
# chosen anyway and its neighbours share a class 97% of the time against 79%; crops of ten colour
# photos (scikit-image's sample images, which crop came from which photo) 0.37-0.40, where HOG's
# neighbours shared a photo 36% of the time against the embedding's 93%, and every view lowered
# NMI from 0.873-0.889 to 0.830-0.849.
VIEW_AGREEMENT = 0.6
# k-means starts within this share of the best inertia are refined as rivals (refine.refine_best) ...
NEAR_OPTIMAL_INERTIA = 0.01
# ... unless they agree with a better start to this adjusted Rand index (then they are the same solution) ...
SAME_SOLUTION_ARI = 0.9
# ... and at most this many: on Fashion-MNIST and the digits there were one to three.
MAX_RIVAL_STARTS = 3


def iter_candidates(views: dict[str, np.ndarray]) -> Iterator[tuple[str, JoinedViews]]:
    """The representations to choose from, one at a time: the embedding, then the embedding joined with HOG.

    Each view is L2-normalised (HOG after centring) before joining, so both
    count equally (``views.join_normalized``). Each is a ``JoinedViews``,
    which holds no joined matrix: :func:`~pixclust.clustering.joined_pca.joined_pca`
    reduces it from the views themselves (the embedding joined with HOG is
    70,000 x 3,044 floats at 70,000 images, 0.85 GB).
    """
    if EMBEDDING_VIEW not in views:
        raise UsageError("the adaptive pipeline needs the image embeddings (view 'embedding')")
    for name in HANDMADE_VIEWS:
        if name in views and len(views[name]) != len(views[EMBEDDING_VIEW]):
            raise UsageError(
                f"{len(views[name])} {name} vectors cannot pair with {len(views[EMBEDDING_VIEW])} embeddings"
            )
    if OUTLINE_VIEW in views and HOG_VIEW not in views:
        raise UsageError("the outline view goes beside HOG; pass the 'hog' view too, or leave the outline out")
    means = view_means(views)
    for names in candidate_views(views):
        yield _candidate_name(names), JoinedViews(views, names, means)


def candidate_views(views: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
    """The views each candidate joins, in the order they are tried."""
    return [(EMBEDDING_VIEW,)] + ([(EMBEDDING_VIEW, HOG_VIEW)] if HOG_VIEW in views else [])


def every_view(views: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The embedding and every hand-made view present (HOG, and the outline where there is one)."""
    return (EMBEDDING_VIEW, *(name for name in HANDMADE_VIEWS if name in views))


def _candidate_name(names: tuple[str, ...]) -> str:
    return "+".join(names)


def candidate_representations(views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every candidate of :func:`iter_candidates` at once, by name, each made whole."""
    return {name: joined.dense() for name, joined in iter_candidates(views)}


def view_agreement(labels: np.ndarray, own: np.ndarray, other: np.ndarray, *, random_state: int = 0) -> float:
    """How much of a clustering's modularity on its own view's kNN graph survives on another view's graph.

    ``own`` and ``other`` are coordinates of the same rows in two views. Near 1
    when images that are neighbours in the other view also share clusters; near
    0 when the other view's neighbours fall in clusters at random.
    """
    own_q = graph_modularity(nearest_neighbours(own, GRAPH_NEIGHBOURS, random_state=random_state), labels)
    other_q = graph_modularity(nearest_neighbours(other, GRAPH_NEIGHBOURS, random_state=random_state), labels)
    if not np.isfinite(own_q) or own_q <= 0:
        return float("nan")
    return float(other_q / own_q)


def _subsample(n: int, size: int, random_state: int) -> np.ndarray:
    """``size`` of ``n`` row numbers in order, drawn without replacement (all of them when there are fewer)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(random_state).choice(n, size=size, replace=False))


def rival_starts(solutions: list[tuple[float, np.ndarray]]) -> list[np.ndarray]:
    """The distinct near-optimal clusterings among k-means starts given lowest inertia first (``kmeans_starts``)."""
    best = solutions[0][0]
    rivals: list[np.ndarray] = []
    for inertia, labels in solutions:
        if len(rivals) == MAX_RIVAL_STARTS or inertia > best * (1 + NEAR_OPTIMAL_INERTIA):
            break
        if all(adjusted_rand_score(kept, labels) < SAME_SOLUTION_ARI for kept in rivals):
            rivals.append(labels)
    return rivals


@dataclass
class CandidateScore:
    """How one representation did: the k it led to, and its mean stability over every candidate's k."""

    k: int
    scan: KScan | None
    stability: float = float("nan")


@dataclass
class AdaptiveResult:
    """What ``AdaptiveClusterer.result_`` gave before the fitted attributes; kept for one release."""

    labels: np.ndarray
    n_clusters: int
    distances: np.ndarray
    silhouettes: np.ndarray
    silhouette: float
    reduction: Reduction
    k_scan: KScan | None
    representation: str
    candidates: dict[str, CandidateScore] = field(default_factory=dict)
    refined_share: float | None = None
    refined_on: str | None = None
    view_agreement: float | None = None
    rival_starts: int = 1
    chosen_start: int = 0
    choice: dict[str, object] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        return self.choice


def _rounded(value: float | None) -> float | None:
    """A figure for run.json: 4 decimals, None where there is none (JSON has no NaN)."""
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


class AdaptiveClusterer:
    """Choose the representation and k on a sample, cluster every row with k-means, then refine.

    The refinement works with every view joined where the views agree (``view_agreement``); after it,
    each image takes the cluster of most of its nearest neighbours and a linear head fitted to that
    assigns every image (``vote.voted_head``).

    ``fit(views)`` takes ``{"embedding": N x d}`` and optionally ``{"hog": N x h}``,
    and beside HOG ``{"outline": N x h}`` (``views.handmade_views`` parts a HOG
    model's vectors into the two), with rows for the same images. ``k`` is a whole number or ``"auto"``
    (scanned over ``k_range`` by kNN-graph modularity). ``refine=False`` stops
    after k-means.

    Fitted attributes, as :class:`~pixclust.clustering.clusterer.ImageClusterer`'s:
    ``labels_`` (0 = largest cluster), ``n_clusters_``, ``distances_`` (to the own
    centre in the chosen features), ``silhouette_values_``, ``silhouette_``,
    ``k_scan_`` (None for a given k), ``choice_`` (what was chosen and why, as
    run.json keeps it); and this pipeline's own: ``reduction_`` (the chosen
    features' PCA), ``representation_``, ``candidates_`` (each candidate's k and
    stability), ``refined_on_``, ``refined_share_`` (share of images the
    refinement moved), ``view_agreement_``, ``model_`` (a
    :class:`~pixclust.clustering.placement.ClusterModel` that places new rows as
    this clustering would).
    """

    def __init__(
        self,
        *,
        k: int | str = "auto",
        k_range: tuple[int, int] = (2, 20),
        refine: bool = True,
        random_state: int = 0,
        selection_sample: int = SELECTION_SAMPLE,
    ) -> None:
        self.k = k
        self.k_range = k_range
        self.refine = refine
        self.random_state = random_state
        self.selection_sample = selection_sample

    def _scan(self, coords: np.ndarray) -> KScan:
        """k-means at every k in range, scored by modularity on the sample's own kNN graph."""

        def partition_at(k: int) -> tuple[np.ndarray, float]:
            kmeans = KMeans(n_clusters=k, n_init=SCAN_STARTS, random_state=self.random_state).fit(coords)
            return kmeans.labels_, float(kmeans.inertia_)

        return scan_k(coords, self.k_range, partition_at, criterion="modularity", random_state=self.random_state)[0]

    def _choose_k(self, sample: np.ndarray) -> CandidateScore:
        if self.k != "auto":
            return CandidateScore(int(self.k), None)
        scan = self._scan(sample) if len(sample) >= 3 else None
        return CandidateScore(scan.chosen_k if scan else 1, scan)

    def _refinement_space(
        self,
        views: dict[str, np.ndarray],
        chosen: str,
        samples: dict[str, np.ndarray],
        rows: np.ndarray,
        labels: np.ndarray,
    ) -> tuple[str, float | None]:
        """The features the refinement works in, and the view agreement that decided it (None: not measured).

        The chosen candidate where it holds HOG already, or where there is no HOG.
        Where the embedding alone is chosen, every view joined (``every_view``) when
        HOG's neighbours agree with the clustering (``VIEW_AGREEMENT``) on the
        selection sample; otherwise the embedding alone.

        The outline joins only there. Where HOG itself is clustered (the digits),
        the outline is a coarser copy of its strokes: refining with it lost 0.017
        NMI on the digits (0.913-0.914 against 0.930-0.932 over seeds 0-2), while
        beside the embedding alone it lifted Fashion-MNIST's test set from
        0.790-0.792 / 0.737-0.739 to 0.797-0.800 / 0.743-0.745 (seeds 0-3).
        """
        if chosen != EMBEDDING_VIEW or HOG_VIEW not in views:
            return chosen, None
        hog = views[HOG_VIEW][rows].astype(np.float32)
        hog -= hog.mean(axis=0)
        hog_sample = reduce_features(
            hog, "pca", n_components=SELECTION_COMPONENTS, random_state=self.random_state, overwrite=True
        ).coords
        agreement = view_agreement(labels[rows], samples[chosen], hog_sample, random_state=self.random_state)
        return (_candidate_name(every_view(views)) if agreement >= VIEW_AGREEMENT else chosen), agreement

    def _reduce(self, joined: JoinedViews) -> Reduction:
        return joined_pca(joined, PCA_COMPONENTS, random_state=self.random_state)

    @staticmethod
    def _space(views: dict[str, np.ndarray], reductions: dict[str, Reduction], name: str) -> FeatureSpace:
        """How new rows reach the candidate ``name``'s PCA space."""
        names = tuple(name.split("+"))
        reduction = reductions[name]
        means = view_means({name: views[name] for name in names})
        return FeatureSpace(names, reduction.pca_mean, reduction.pca_components, means)

    def fit(self, views: dict[str, np.ndarray]) -> AdaptiveClusterer:
        if EMBEDDING_VIEW in views:
            check_k_settings(self.k, self.k_range, self.random_state, len(views[EMBEDDING_VIEW]))
        reductions = {}
        for name, joined in iter_candidates(views):
            reductions[name] = self._reduce(joined)
        rows = _subsample(len(views[EMBEDDING_VIEW]), self.selection_sample, self.random_state)
        samples = {name: reduction.coords[rows, :SELECTION_COMPONENTS] for name, reduction in reductions.items()}
        scores = {name: self._choose_k(sample) for name, sample in samples.items()}
        if len(scores) > 1:
            # Each candidate is judged at the k it proposes. Judged at every k any candidate proposed,
            # Fashion-MNIST's embedding was scored at embedding + HOG's 13-14 too, where it is
            # less stable, and lost at 2 of 6 seeds with --k auto (ACC 0.55-0.61); the digits' choice
            # is the same either way.
            few = _subsample(len(rows), STABILITY_SAMPLE, self.random_state)
            for name, score in scores.items():
                score.stability = clustering_stability(samples[name][few], score.k, random_state=self.random_state)
        chosen = choose_representation({name: score.stability for name, score in scores.items()})
        reduction = reductions[chosen]
        coords = reduction.coords
        k = min(scores[chosen].k, len(coords))
        solutions = kmeans_starts(coords, k, random_state=self.random_state)
        labels, _ = relabel_by_size(solutions[0][1])
        refined_share, refined_on, agreement, rivals, chosen_start, voted_share = None, None, None, 1, 0, None
        chosen_space = self._space(views, reductions, chosen)
        head: tuple[FeatureSpace, np.ndarray, np.ndarray] | None = None
        if self.refine and k >= 2:
            # k-means starts from the most stable candidate, but the refinement sees every view (the
            # last candidate joins them all) where the views agree. On Fashion-MNIST's test set, where
            # the embedding alone is chosen, its neighbours in the joined space share a class 83% of
            # the time against 80% in the embedding's, and over six seeds with --k 10 ACC rose from
            # 0.769-0.772 to 0.790-0.792 and NMI from 0.712-0.715 to 0.736-0.740 (neighbours from
            # the joined space with the head on the embedding alone: 0.777-0.780 / 0.723-0.727).
            refined_on, agreement = self._refinement_space(views, chosen, samples, rows, solutions[0][1])
            if refined_on not in reductions:
                # Every view joined is reduced only where the refinement uses it.
                reductions[refined_on] = self._reduce(
                    JoinedViews(views, tuple(refined_on.split("+")), view_means(views))
                )
            space = reductions[refined_on].coords
            anchors, neighbours = anchor_neighbours(space, DEFAULT_NEIGHBOURS, random_state=self.random_state)
            starts = rival_starts(solutions)
            refinement, chosen_start = refine_best(
                space, starts, neighbours, anchors=anchors, random_state=self.random_state
            )
            refined, weight, bias = refinement.labels, refinement.weight, refinement.bias
            rivals = len(starts)
            if weight is not None:
                voted = voted_head(space, refined, anchors, neighbours, random_state=self.random_state)
                if voted is not None:
                    weight, bias = voted
                    refined = head_labels(space, weight, bias)
                    voted_share = float(np.mean(refined != refinement.labels))
            refined_share = float(np.mean(refined != starts[chosen_start]))
            labels, old_by_size = relabel_by_size(refined)
            if weight is not None:
                head = (
                    chosen_space if refined_on == chosen else self._space(views, reductions, refined_on),
                    weight[:, old_by_size],
                    bias[old_by_size],
                )
        self.model_ = ClusterModel.from_clustering(
            chosen_space, coords, labels, head=head, random_state=self.random_state
        )
        _, self.distances_ = centres_and_distances(coords, labels)
        self.labels_ = labels
        self.n_clusters_ = int(labels.max()) + 1
        self.silhouette_values_ = silhouette_values(coords, labels, random_state=self.random_state)
        self.silhouette_ = mean_silhouette(self.silhouette_values_)
        self.reduction_ = reduction
        self.k_scan_ = scores[chosen].scan
        self.representation_ = chosen
        self.candidates_ = scores
        self.refined_share_ = refined_share
        self.refined_on_ = refined_on
        self.view_agreement_ = agreement
        self.choice_ = {
            "representation": chosen,
            "candidates": {
                name: {"k": score.k, "stability": _rounded(score.stability)} for name, score in scores.items()
            },
            "refined_share": _rounded(refined_share),
            "voted_share": _rounded(voted_share),
            "refined_on": refined_on,
            "view_agreement": _rounded(agreement),
            "rival_starts": rivals,
            "chosen_start": chosen_start,
        }
        return self

    @property
    def result_(self) -> AdaptiveResult:
        """The fitted attributes in one object, as pixclust 0.1 gave them; use the attributes instead."""
        warnings.warn(
            "AdaptiveClusterer.result_ is deprecated and goes in the next release; read labels_, n_clusters_, "
            "k_scan_, choice_ and the other fitted attributes instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return AdaptiveResult(
            labels=self.labels_,
            n_clusters=self.n_clusters_,
            distances=self.distances_,
            silhouettes=self.silhouette_values_,
            silhouette=self.silhouette_,
            reduction=self.reduction_,
            k_scan=self.k_scan_,
            representation=self.representation_,
            candidates=self.candidates_,
            refined_share=self.refined_share_,
            refined_on=self.refined_on_,
            view_agreement=self.view_agreement_,
            rival_starts=self.choice_["rival_starts"],
            chosen_start=self.choice_["chosen_start"],
            choice=self.choice_,
        )
