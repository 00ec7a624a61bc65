"""From a few example images per class to a label for every image (or "none").

Two rules are here. The seed's rule, :func:`nearest_example_scores` with
:func:`threshold_labels`: an image takes the class of its most similar
example when that cosine clears one global threshold. And
:class:`ExampleLabeller`, which does what works with few labels:

1. **centre** the vectors on the collection's mean, so cosine measures how
   images differ from each other rather than their shared "is a photo" part;
2. **label propagation** (Zhou et al. 2004) over the symmetric k-nearest-
   neighbour graph of images and examples: examples spread their class along
   the data's own structure, and how much label reaches an image says how
   close it is to any example;
3. **"none" estimated per class**: among the images a class wins, the log
   label strength has a high mode (the class) and, when other kinds of
   image are present, a low one; a two-component Gaussian mixture per class
   places that class's cut where the modes meet;
4. **class prototypes** (the mean of each class's examples) give
   ``similarity_`` and label any image the graph does not reach.

:func:`suggest_examples` picks what to label next: uncertain images that
stand for large regions the examples do not cover yet.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixclust.clustering.reduce import l2_normalize
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.names import from_cell

if TYPE_CHECKING:
    from pixclust.labelling.feedback import Feedback
    from pixclust.labelling.open_set import ClassEstimate
    from pixclust.labelling.structure import Structure

NONE = "none"
NONE_LABEL = -1
DEFAULT_THRESHOLDS = (0.70, 0.75, 0.80)


@dataclass
class References:
    """Example vectors with their class index; ``rows`` are their rows in the embeddings, when they are in them."""

    class_names: list[str]
    vectors: np.ndarray
    classes: np.ndarray
    rows: list[int | None]

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.classes == c)) for c, name in enumerate(self.class_names)}


def references_from_csv(path: str | Path, embeddings: Embeddings) -> References:
    """Examples named by a CSV of ``class,id`` rows, the ids being rows of ``embeddings`` (paths or ids)."""
    from pixclust.curation.search import rows_of

    try:
        with open(path, newline="", encoding="utf-8") as stream:
            pairs = [
                (from_cell(row[0].strip()), from_cell(row[1].strip())) for row in csv.reader(stream) if len(row) >= 2
            ]
    except OSError as error:
        raise UsageError(
            f"cannot read --refs {path} ({error.strerror}); give a folder of class folders or a CSV of class,id"
        ) from error
    if pairs and pairs[0][0].lower() in ("class", "label"):
        pairs = pairs[1:]
    rows = rows_of(embeddings, [item for _, item in pairs])
    missing = [item for (_, item), row in zip(pairs, rows, strict=True) if row is None]
    if missing:
        raise UsageError(
            f"--refs {path}: {len(missing)} ids are not in the embeddings (first: {missing[0]}); use paths or ids as listed there"
        )
    return _references([name for name, _ in pairs], embeddings.vectors[[r for r in rows if r is not None]], list(rows))


def references_from_folder(folder: str | Path, embeddings: Embeddings) -> References:
    """Examples from ``folder/<class>/<images>``, embedded with the model that made ``embeddings``."""
    from pixclust.embedding.sources import embed_images, extractor_for
    from pixclust.embedding.store import content_hash

    root = Path(folder)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if not class_dirs:
        raise UsageError(f"--refs {folder} has no class folders; make one subfolder of example images per class")
    if NONE in [p.name for p in class_dirs]:
        raise UsageError(
            f"--refs {folder}: '{NONE}' is the name pixclust gives to images of no class; rename that folder"
        )
    extractor = extractor_for(embeddings.model)
    paths, vectors, _ = embed_images(class_dirs, extractor)
    if not paths:
        raise UsageError(f"--refs {folder}: no usable images in its class folders")
    by_hash = {digest: row for row, digest in enumerate(embeddings.content_hashes) if digest}
    names = [Path(path).relative_to(root).parts[0] for path in paths]
    return _references(names, vectors, [by_hash.get(content_hash(path)) for path in paths])


def _references(names: Sequence[str], vectors: np.ndarray, rows: list[int | None]) -> References:
    class_names = sorted(set(names))
    if not class_names:
        raise UsageError("no example images given; give at least one example per class")
    if NONE in class_names:
        raise UsageError(f"'{NONE}' is the name pixclust gives to images of no class; name your classes otherwise")
    classes = np.array([class_names.index(name) for name in names], dtype=np.int64)
    return References(class_names, np.asarray(vectors, np.float32), classes, rows)


def with_stand_ins(refs: References, vectors: np.ndarray) -> References:
    """``refs`` with every example given a row: one outside the collection takes its most similar image's row.

    The clusters an example claims are the collection's; an example from elsewhere speaks for the image most
    like it.
    """
    outside = [i for i, row in enumerate(refs.rows) if row is None]
    if not outside:
        return refs
    nearest = (l2_normalize(refs.vectors[outside]) @ l2_normalize(vectors).T).argmax(axis=1)
    rows = list(refs.rows)
    for i, row in zip(outside, nearest, strict=True):
        rows[i] = int(row)
    return References(refs.class_names, refs.vectors, refs.classes, rows)


def nearest_example_scores(vectors: np.ndarray, refs: References) -> np.ndarray:
    """N x C: each image's cosine to its most similar example of each class (the seed's score)."""
    sims = l2_normalize(vectors) @ l2_normalize(refs.vectors).T
    scores = np.full((len(vectors), len(refs.class_names)), -1.0, np.float32)
    for c in range(len(refs.class_names)):
        scores[:, c] = sims[:, refs.classes == c].max(axis=1)
    return scores


def threshold_labels(scores: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """The best class where its score clears the threshold (one, or one per class), else ``NONE_LABEL``."""
    best = scores.argmax(axis=1)
    cut = np.broadcast_to(np.asarray(threshold, np.float32), (scores.shape[1],))
    return np.where(scores[np.arange(len(scores)), best] >= cut[best], best, NONE_LABEL)


def count_table(
    scores: np.ndarray, thresholds: Sequence[float], class_names: Sequence[str]
) -> dict[float, dict[str, int]]:
    """Images per class (and ``none``) at each threshold, like the seed's 0.70/0.75/0.80 table."""
    table = {}
    for threshold in thresholds:
        labels = threshold_labels(scores, threshold)
        counts = {name: int(np.sum(labels == c)) for c, name in enumerate(class_names)}
        counts[NONE] = int(np.sum(labels == NONE_LABEL))
        table[float(threshold)] = counts
    return table


class ExampleLabeller:
    """Labels every image from a few examples: prototypes, label propagation, per-class "none" cuts.

    After :meth:`fit`: ``labels_`` (class index, or -1 for none),
    ``scores_`` (N x C confidence in [0, 1]: the share of the propagated
    label that is the class, times the probability of not being "none"),
    ``similarity_`` (N x C centred cosine to each class prototype) and
    ``cuts_`` (per class, the propagated strength under which an image the
    class wins goes to "none"; NaN where nothing was cut).
    With ``estimate_none=False`` every image gets a class.
    """

    def __init__(
        self,
        *,
        n_neighbors: int = 10,
        alpha: float = 0.9,
        n_iter: int = 60,
        estimate_none: bool = True,
        random_state: int = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.alpha = alpha
        self.n_iter = n_iter
        self.estimate_none = estimate_none
        self.random_state = random_state

    def fit(self, vectors: np.ndarray, refs: References) -> ExampleLabeller:
        n_classes = len(refs.class_names)
        centre = np.asarray(vectors, np.float64).mean(axis=0)
        pool = l2_normalize(np.asarray(vectors, np.float64) - centre)
        examples = l2_normalize(np.asarray(refs.vectors, np.float64) - centre)
        prototypes = l2_normalize(np.vstack([examples[refs.classes == c].mean(axis=0) for c in range(n_classes)]))
        similarity = pool @ prototypes.T

        spread = self._propagate(np.vstack([pool, examples]), refs.classes, n_classes)[: len(pool)]
        mass = spread.sum(axis=1, keepdims=True)
        # An image the graph never reached (an isolated component) falls back on the prototypes.
        posterior = np.where(mass > 0, spread / np.where(mass > 0, mass, 1), _softmax(similarity * 10))
        winner = posterior.argmax(axis=1)
        # How much label reached the image: high near examples, orders of magnitude lower in other regions.
        strength = np.log(spread.max(axis=1) + 1e-12)

        in_class = np.ones(len(pool))
        cuts = np.full(n_classes, np.nan)
        if self.estimate_none:
            for c in range(n_classes):
                won = winner == c
                in_class[won], cuts[c] = self._class_membership(strength[won])
        self.scores_ = (posterior * in_class[:, None]).astype(np.float32)
        self.labels_ = np.where(in_class >= 0.5, winner, NONE_LABEL)
        self.similarity_ = similarity.astype(np.float32)
        self.cuts_ = np.exp(cuts)
        return self

    def _propagate(self, nodes: np.ndarray, example_classes: np.ndarray, n_classes: int) -> np.ndarray:
        """Zhou et al.'s F <- alpha S F + (1 - alpha) Y over the symmetric, normalised kNN graph."""
        from scipy import sparse

        from pixclust.index import VectorIndex

        n = len(nodes)
        k = min(self.n_neighbors + 1, n)
        unit = nodes.astype(np.float32)
        sims, ids = VectorIndex(unit).search(unit, k)
        rows = np.repeat(np.arange(n), k)
        neighbours = ids.reshape(-1)
        keep = (neighbours >= 0) & (neighbours != rows)
        weights = np.clip(sims.reshape(-1)[keep], 0, None)
        graph = sparse.csr_matrix((weights, (rows[keep], neighbours[keep])), shape=(n, n))
        graph = graph.maximum(graph.T)
        degree = np.asarray(graph.sum(axis=1)).reshape(-1)
        scale = sparse.diags(1 / np.sqrt(np.where(degree > 0, degree, 1)))
        normalised = scale @ graph @ scale
        seeds = np.zeros((n, n_classes))
        seeds[n - len(example_classes) + np.arange(len(example_classes)), example_classes] = 1.0
        spread = seeds.copy()
        for _ in range(self.n_iter):
            spread = self.alpha * (normalised @ spread) + (1 - self.alpha) * seeds
        return spread

    def _class_membership(self, strength: np.ndarray) -> tuple[np.ndarray, float]:
        """P(in the class) for the images one class won, from a two-mode mixture of their label strength.

        One mode (by BIC), or too few images to tell, means no cut.
        """
        from sklearn.mixture import GaussianMixture

        values = strength.reshape(-1, 1)
        if len(values) < 10:
            return np.ones(len(values)), float("nan")
        one = GaussianMixture(1, random_state=self.random_state).fit(values)
        two = GaussianMixture(2, n_init=2, random_state=self.random_state).fit(values)
        if two.bic(values) >= one.bic(values):
            return np.ones(len(values)), float("nan")
        high = int(np.argmax(two.means_.reshape(-1)))
        membership = two.predict_proba(values)[:, high]
        # Above the high mode's centre an image is in the class, whatever the low mode's wide tail says.
        membership[strength >= two.means_[high, 0]] = 1.0
        below = strength[membership < 0.5]
        return membership, float(below.max()) if len(below) else float("nan")


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def suggest_examples(
    vectors: np.ndarray, scores: np.ndarray, n: int, *, exclude: Sequence[int] = (), random_state: int = 0
) -> list[int]:
    """``n`` rows to label next: the most uncertain image of each of ``n`` regions, largest uncertain regions first.

    Uncertainty is 1 - (best score - second best), with "none" counted as a
    score of 1 - best; regions are k-means clusters of the images.
    """
    from sklearn.cluster import KMeans

    if n < 1:
        raise UsageError(f"--suggest {n} must be at least 1")
    candidates = np.setdiff1d(np.arange(len(vectors)), np.asarray(exclude, dtype=np.int64))
    if len(candidates) == 0:
        return []
    with_none = np.column_stack([scores, 1 - scores.max(axis=1)])
    ordered = np.sort(with_none, axis=1)
    uncertainty = 1 - (ordered[:, -1] - ordered[:, -2])
    unit = l2_normalize(vectors[candidates])
    k = min(n, len(candidates))
    regions = KMeans(k, n_init=1, random_state=random_state).fit_predict(unit)
    picks = []
    for region in range(k):
        members = candidates[regions == region]
        weight = float(uncertainty[members].sum())
        picks.append((weight, int(members[np.argmax(uncertainty[members])])))
    return [row for _, row in sorted(picks, reverse=True)]


def read_labelled_list(path: str | Path) -> list[tuple[str, str]]:
    """(id, class) pairs from a CSV with an id column (id, path, file, image) and a class column (label, class).

    Without such a header the first two columns are taken as id and class.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            # from_cell: labels.csv written by pixclust holds its names escaped and formula-proofed (pixclust.names).
            rows = [[from_cell(cell.strip()) for cell in row] for row in csv.reader(stream) if len(row) >= 2]
    except OSError as error:
        raise UsageError(f"cannot read {path} ({error.strerror}); give a CSV of id,label rows") from error
    if not rows:
        raise UsageError(f"{path} has no id,label rows")
    header = [cell.lower() for cell in rows[0]]
    id_col = next((header.index(name) for name in ("id", "path", "file", "filename", "image") if name in header), None)
    label_col = next((header.index(name) for name in ("label", "class", "category") if name in header), None)
    if id_col is None or label_col is None:
        return [(row[0], row[1]) for row in rows]
    return [(row[id_col], row[label_col]) for row in rows[1:] if row[id_col] and row[label_col]]


def rows_with_labels(
    embeddings: Embeddings, pairs: Sequence[tuple[str, str]], *, what: str
) -> tuple[list[int], list[str]]:
    """Rows of the listed ids and their classes; every id must be in the embeddings."""
    from pixclust.curation.search import rows_of

    rows = rows_of(embeddings, [item for item, _ in pairs])
    missing = [item for (item, _), row in zip(pairs, rows, strict=True) if row is None]
    if missing:
        raise UsageError(
            f"{what}: {len(missing)} ids are not in the embeddings (first: {missing[0]}); use paths or ids as stored there"
        )
    return [row for row in rows if row is not None], [label for _, label in pairs]


@dataclass
class LabelResult:
    """A class (or ``none``) for every image, how sure, and what to label next.

    ``labels[i]`` is a class index or -1; ``confidence`` is the labeller's
    score for the label given; ``similarity`` is the seed's score, the cosine
    to the nearest example of the best class. ``table`` counts the seed's
    nearest-example rule at each threshold. With the ``clusters`` method,
    ``estimates`` holds each class's expected precision and recall and
    ``none_found`` says whether any image was judged to be of no class.
    """

    paths: list[str]
    class_names: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    similarity: np.ndarray
    method: str
    table: dict[float, dict[str, int]]
    suggestions: list[int]
    estimates: list[ClassEstimate] = field(default_factory=list)
    none_found: bool | None = None

    def label_name(self, row: int) -> str:
        label = int(self.labels[row])
        return NONE if label == NONE_LABEL else self.class_names[label]

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.labels == c)) for c, name in enumerate(self.class_names)} | {
            NONE: int(np.sum(self.labels == NONE_LABEL))
        }


LABEL_METHODS = ("clusters", "propagate", "nearest")
DEFAULT_LABEL_METHOD = "clusters"


def check_label_options(method: str, thresholds: Sequence[float], suggest: int, *, with_feedback: bool) -> None:
    """Refuse, in one line, options that cannot work together or at all."""
    if method not in LABEL_METHODS:
        raise UsageError(f"--method {method!r} is not known; choose {' or '.join(LABEL_METHODS)}")
    if not thresholds or not all(-1.0 <= t <= 1.0 for t in thresholds):
        raise UsageError(f"--threshold {list(thresholds)}: give cosine values between -1 and 1, e.g. 0.70 0.75 0.80")
    if with_feedback and method != "clusters":
        raise UsageError(f"--feedback is read by --method clusters (the default), not {method}; drop one of them")
    if suggest < 0:
        raise UsageError(f"--suggest {suggest} must be at least 1 (or 0 for no suggestions)")


def label_images(
    embeddings: Embeddings,
    refs: References,
    *,
    method: str = DEFAULT_LABEL_METHOD,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    suggest: int = 0,
    estimate_none: bool = True,
    structure: Structure | None = None,
    feedback: Feedback | None = None,
    random_state: int = 0,
) -> LabelResult:
    """Label every image from the examples: ``clusters`` (:class:`open_set.ClusterLabeller` over ``structure``,
    the run's clusters, or its own when None), ``propagate`` (:class:`ExampleLabeller`) or ``nearest`` (the
    seed's rule at ``thresholds[0]``). ``feedback`` (answers to suggestions) is for ``clusters``.

    ``estimate_none=False`` says every image belongs to one of the classes, so no image is "none" (label
    propagation without a cut); ``clusters`` recognises that case by itself in most collections.
    """
    from pixclust.labelling.open_set import ClusterLabeller
    from pixclust.labelling.structure import own_structure

    check_label_options(method, thresholds, suggest, with_feedback=bool(feedback))
    nearest = nearest_example_scores(embeddings.vectors, refs)
    estimates, none_found, claimed = [], None, None
    if method == "nearest":
        labels = threshold_labels(nearest, thresholds[0])
        scores = nearest
    elif method == "propagate":
        labeller = ExampleLabeller(estimate_none=estimate_none, random_state=random_state).fit(embeddings.vectors, refs)
        labels, scores = labeller.labels_, labeller.scores_
    else:
        structure = structure or own_structure(embeddings.vectors, random_state=random_state)
        claimed = ClusterLabeller(all_labelled=not estimate_none, random_state=random_state)
        claimed.fit(structure.features, structure.clusters, with_stand_ins(refs, embeddings.vectors), feedback)
        labels, scores = claimed.labels_, claimed.scores_
        estimates, none_found = claimed.estimates_, claimed.none_present_
    for row, cls in zip(refs.rows, refs.classes, strict=True):
        if row is not None:
            labels[row] = cls
    best = scores.argmax(axis=1)
    chosen = np.where(labels == NONE_LABEL, best, labels)
    # Examples and answered images are known already: never suggested again.
    known = [row for row in refs.rows if row is not None]
    if feedback:
        known += [row for row, _ in feedback.positive + feedback.negative]
    return LabelResult(
        paths=list(embeddings.paths),
        class_names=list(refs.class_names),
        labels=labels,
        confidence=np.where(labels == NONE_LABEL, 1 - scores.max(axis=1), scores[np.arange(len(labels)), chosen]),
        similarity=nearest[np.arange(len(labels)), chosen],
        method=method,
        table=count_table(nearest, thresholds, refs.class_names),
        suggestions=[]
        if not suggest
        else claimed.suggest(suggest, known, random_state=random_state)
        if claimed is not None and claimed.none_present_
        else suggest_examples(embeddings.vectors, scores, suggest, exclude=known, random_state=random_state),
        estimates=estimates,
        none_found=none_found,
    )
