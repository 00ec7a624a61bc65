"""A finished clustering as a model: place new images in its clusters, and tell which fit none of them.

``ClusterModel`` keeps what a run ended with, so new images get the cluster the
run would have given them without clustering again:

- the features it clustered (``FeatureSpace``): the embedding alone or joined
  with HOG, L2-normalised and projected by the run's own PCA;
- how a row gets its cluster: the refinement's softmax head in the space it was
  trained in, where the default pipeline refined; otherwise the nearest cluster
  centre (k-means itself, and every method with no way to place new points:
  GMM, agglomerative, HDBSCAN, and UMAP/LLE/spectral reductions, whose
  centres live in an L2 + PCA space of the embedding fitted for the purpose);
- novelty: a row is new to the run when its distance to the nearest members of
  its cluster is larger than all but a chosen share (``false_alarms``, 5% by
  default) of that cluster's own members' distances to their nearest other
  members. So the share of images like the run's own that are flagged is
  chosen, and what is flagged beyond it is what does not look like the run.

The model is saved as ``cluster_model.npz`` in the run folder: arrays and one
JSON header, read back with ``allow_pickle=False``, so loading a crafted file
runs nothing.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.clustering.views import (
    EMBEDDING_VIEW,
    HANDMADE_VIEWS,
    HOG_VIEW,
    OUTLINE_VIEW,
    JoinedViews,
    handmade_views,
)
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError

MODEL_FORMAT = "pixclust-cluster-model"
MODEL_VERSION = 1
# The share of a cluster's own images that would count as novel were they new: each cluster's radius is this
# upper quantile of its members' distances to their nearest other members.
NOVELTY_FALSE_ALARMS = 0.05
# Leading components of the clustering space novelty is measured in. The trailing ones are fitted to the run's
# own images, which then look further apart than new images of the same kinds: with all 128, a run of 400
# digits flagged none of 80 held-out images of its classes (5% were meant) and half of two unseen digits.
# Measured (bench/add.py's settings; false alarms at the default 5%, novel images caught), 32 against 128:
# Fashion-MNIST 1,000-image runs 0.04-0.05 / 0.09-0.38 against 0.02-0.03 / 0.05-0.25; digits 1,087-image
# run 0.034 / 0.955 against 0.017 / 0.963 (8 fewer components caught more on Fashion-MNIST and less on
# the digits: 0.75).
NOVELTY_COMPONENTS = 32
# Members kept per cluster as the reference novelty is measured against (all of a smaller cluster).
NOVELTY_MEMBERS = 2_000
# Nearest members a row's novelty distance averages over: one is noisy, many blur small clusters.
NOVELTY_NEIGHBOURS = 5
# Rows measured at once against a cluster's reference members (rows x NOVELTY_MEMBERS floats: 32 MB).
PLACEMENT_CHUNK = 4_096


@dataclass(frozen=True)
class FeatureSpace:
    """Features made from ``views`` (``views.view_features``, each hand-made view centred on its ``view_means``),
    then centred on ``mean`` and projected on ``components`` (m x D)."""

    views: tuple[str, ...]
    mean: np.ndarray
    components: np.ndarray
    view_means: Mapping[str, np.ndarray] = field(default_factory=dict)

    def transform(self, views: Mapping[str, np.ndarray]) -> np.ndarray:
        # As products of the views (views.JoinedViews): the features are never made whole for the rows placed.
        projection = self.components.T.astype(np.float32)
        coords = JoinedViews(views, self.views, self.view_means).times(projection)
        coords -= self.mean.astype(np.float32) @ projection
        return np.ascontiguousarray(coords, dtype=np.float32)


@dataclass(frozen=True)
class Placement:
    """Where new rows go: ``labels`` (the run's cluster ids), ``distances`` to that cluster's centre in the
    run's clustering space, ``novelty`` (1 = at the cluster's radius: as far from its members as its own
    most outlying ones),
    ``novel`` (``novelty > 1``) and ``coords`` (the rows in the clustering space; x and y are its first two)."""

    labels: np.ndarray
    distances: np.ndarray
    novelty: np.ndarray
    novel: np.ndarray
    coords: np.ndarray


class ClusterModel:
    """A run's clustering, able to place new rows (scikit-learn style: ``predict``).

    Build one with :meth:`from_clustering` from the clustering's parts (``pixclust.cluster``
    does, as ``ClusterResult.model``), or :meth:`load` it from a run folder.
    """

    def __init__(
        self,
        space: FeatureSpace,
        centres: np.ndarray,
        references: np.ndarray,
        reference_labels: np.ndarray,
        reference_distances: np.ndarray,
        *,
        head_space: FeatureSpace | None = None,
        head_weight: np.ndarray | None = None,
        head_bias: np.ndarray | None = None,
    ) -> None:
        self.space = space
        self.centres = np.asarray(centres, dtype=np.float32)
        self.references = np.asarray(references, dtype=np.float32)
        self.reference_labels = np.asarray(reference_labels, dtype=np.int64)
        self.reference_distances = np.asarray(reference_distances, dtype=np.float32)
        self.head_space, self.head_weight, self.head_bias = head_space, head_weight, head_bias

    @property
    def n_clusters(self) -> int:
        return len(self.centres)

    @property
    def views(self) -> tuple[str, ...]:
        """Every view a new image needs (the embedding, and the hand-made views the run joined)."""
        needed = set(self.space.views) | set(self.head_space.views if self.head_space else ())
        return tuple(name for name in (EMBEDDING_VIEW, *HANDMADE_VIEWS) if name in needed)

    @classmethod
    def from_clustering(
        cls,
        space: FeatureSpace,
        coords: np.ndarray,
        labels: np.ndarray,
        *,
        head: tuple[FeatureSpace, np.ndarray, np.ndarray] | None = None,
        random_state: int = 0,
    ) -> ClusterModel:
        """The model of ``labels`` (0..k-1, -1 for noise) over ``coords``, the rows in ``space``.

        ``head`` is the refinement's (space, weight d x k, bias k) with columns in
        the order of ``labels``. The novelty reference is a sample of each
        cluster's members (``NOVELTY_MEMBERS``, their leading
        ``NOVELTY_COMPONENTS``) with their distances to their nearest other members.
        """
        labels = np.asarray(labels)
        n_clusters = int(labels.max()) + 1
        rng = np.random.default_rng(random_state)
        kept, centres = [], np.zeros((n_clusters, coords.shape[1]), np.float32)
        for label in range(n_clusters):
            members = np.flatnonzero(labels == label)
            centres[label] = coords[members].mean(axis=0)
            if len(members) > NOVELTY_MEMBERS:
                members = np.sort(rng.choice(members, NOVELTY_MEMBERS, replace=False))
            kept.append(members)
        rows = np.concatenate(kept)
        references = np.ascontiguousarray(coords[rows, :NOVELTY_COMPONENTS])
        model = cls(space, centres, references, labels[rows], np.zeros(len(rows)), **_head_arguments(head))
        model.reference_distances = model._member_distances(references, labels[rows], exclude_self=True)
        return model

    def refitted(self, views: Mapping[str, np.ndarray], labels: np.ndarray, *, random_state: int = 0) -> ClusterModel:
        """A model of other clusters of the same rows, ``labels`` (0..k-1, negative for none), in this model's space.

        It places by nearest centre: a person's corrections leave the refinement's head, trained on the
        clusters as they were, without a column for a cluster made or merged.
        """
        coords = self.space.transform(_as_views(views, self.space.views))
        return ClusterModel.from_clustering(self.space, coords, labels, random_state=random_state)

    def radii(self, false_alarms: float = NOVELTY_FALSE_ALARMS) -> np.ndarray:
        """Each cluster's novelty radius: all but ``false_alarms`` of its members are within it of their neighbours."""
        if not 0 < false_alarms < 1:
            raise UsageError(f"false alarms {false_alarms} must be a share between 0 and 1, such as 0.05")
        radii = np.full(self.n_clusters, np.inf, dtype=np.float32)
        for label in range(self.n_clusters):
            own = self.reference_distances[(self.reference_labels == label) & np.isfinite(self.reference_distances)]
            if len(own):
                radii[label] = max(float(np.quantile(own, 1 - false_alarms)), float(np.finfo(np.float32).tiny))
        return radii

    def _member_distances(self, coords: np.ndarray, labels: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
        """Each row's mean Euclidean distance to its NOVELTY_NEIGHBOURS nearest reference members of cluster ``labels``."""
        distances = np.full(len(coords), np.inf, dtype=np.float32)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            members = self.references[self.reference_labels == label]
            wanted = min(NOVELTY_NEIGHBOURS, len(members) - int(exclude_self))
            if wanted < 1:
                continue
            for begin in range(0, len(rows), PLACEMENT_CHUNK):
                part = rows[begin : begin + PLACEMENT_CHUNK]
                squared = _squared_distances(coords[part], members)
                if exclude_self:
                    # The rows are the members themselves, in order: a row is not its own neighbour.
                    squared[np.arange(len(part)), begin + np.arange(len(part))] = np.inf
                nearest = np.partition(squared, wanted - 1, axis=1)[:, :wanted]
                distances[part] = np.sqrt(np.maximum(nearest, 0)).mean(axis=1)
        return distances

    def place(
        self, views: Mapping[str, np.ndarray] | Embeddings | np.ndarray, *, false_alarms: float = NOVELTY_FALSE_ALARMS
    ) -> Placement:
        """The cluster of each new row, its distance to the centre, and whether it fits the cluster at all.

        ``views`` maps view names to N x d arrays (``self.views`` says which are needed), or is the
        ``Embeddings`` of image files (``pixclust.embed`` with the run's model; HOG is then made from
        the files where the run joined it), or an N x d array of embeddings. ``false_alarms`` is the
        share of images like the cluster's own that count as novel (see ``radii``).
        """
        radii = self.radii(false_alarms)
        views = _as_views(views, self.views)
        coords = self.space.transform(views)
        if self.head_space is not None:
            head_coords = coords if self.head_space is self.space else self.head_space.transform(views)
            labels = np.argmax(head_coords @ self.head_weight + self.head_bias, axis=1)
        else:
            labels = np.argmin(_squared_distances(coords, self.centres), axis=1)
        distances = np.linalg.norm(coords - self.centres[labels], axis=1)
        novelty = self._member_distances(coords[:, :NOVELTY_COMPONENTS], labels) / radii[labels]
        return Placement(labels.astype(np.int64), distances, novelty, novelty > 1, coords)

    def predict(self, views: Mapping[str, np.ndarray] | Embeddings | np.ndarray) -> np.ndarray:
        """The cluster id of each row (novel rows included: ``place`` says which those are)."""
        return self.place(views).labels

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` atomically (a NumPy ``.npz`` of arrays and a JSON header)."""
        arrays = {
            "centres": self.centres,
            "references": self.references,
            "reference_labels": self.reference_labels,
            "reference_distances": self.reference_distances,
            **_space_arrays("space", self.space),
        }
        header: dict[str, object] = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "space_views": list(self.space.views),
            "head_views": None,
        }
        if self.head_space is not None:
            header["head_views"] = list(self.head_space.views)
            header["head_shares_space"] = self.head_space is self.space
            arrays |= {"head_weight": self.head_weight, "head_bias": self.head_bias}
            if self.head_space is not self.space:
                arrays |= _space_arrays("head_space", self.head_space)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with atomic_path(Path(path)) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ClusterModel:
        """The model saved at ``path``; a file that is not one is a one-line ``UsageError``."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            header = json.loads(bytes(arrays.pop("header")).decode())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, io.UnsupportedOperation) as error:
            raise UsageError(f"{path} is not a pixclust cluster model ({error}); re-run 'pixclust cluster'") from None
        if not isinstance(header, dict) or header.get("format") != MODEL_FORMAT:
            raise UsageError(f"{path} is not a pixclust cluster model; re-run 'pixclust cluster'")
        if header.get("version") != MODEL_VERSION:
            raise UsageError(
                f"{path} is a cluster model of version {header.get('version')!r}, which this pixclust does not "
                "read; re-run 'pixclust cluster' for the run"
            )
        try:
            space = _space_from(arrays, "space", header["space_views"])
            head: tuple[FeatureSpace, np.ndarray, np.ndarray] | None = None
            if header["head_views"] is not None:
                head_space = (
                    space if header["head_shares_space"] else _space_from(arrays, "head_space", header["head_views"])
                )
                head = (head_space, arrays["head_weight"], arrays["head_bias"])
            model = cls(
                space,
                arrays["centres"],
                arrays["references"],
                arrays["reference_labels"],
                arrays["reference_distances"],
                **_head_arguments(head),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"{path} is a damaged cluster model ({error}); re-run 'pixclust cluster'") from None
        model._check(path)
        return model

    def _check(self, path: str | Path) -> None:
        """Shapes that agree, so a crafted file fails here in one line rather than deep in a matrix product."""
        k, m = self.centres.shape if self.centres.ndim == 2 else (0, 0)
        checks = [
            self.centres.ndim == 2 and k >= 1,
            self.space.components.ndim == 2 and self.space.components.shape[0] == m,
            self.space.mean.shape == (self.space.components.shape[1],),
            self.references.ndim == 2 and self.references.shape[1] == min(m, NOVELTY_COMPONENTS),
            self.reference_labels.shape == (len(self.references),),
            self.reference_distances.shape == (len(self.references),),
            bool(np.all((self.reference_labels >= 0) & (self.reference_labels < k))),
        ]
        if self.head_space is not None:
            checks += [
                self.head_weight.shape == (self.head_space.components.shape[0], k),
                self.head_bias.shape == (k,),
            ]
        arrays = [self.centres, self.references, self.space.mean, self.space.components]
        if not all(checks) or not all(np.all(np.isfinite(array)) for array in arrays[:2]):
            raise UsageError(
                f"{path} is a damaged cluster model (its arrays do not fit together); re-run 'pixclust cluster'"
            )


def _squared_distances(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    return (rows * rows).sum(axis=1)[:, None] - 2 * rows @ others.T + (others * others).sum(axis=1)[None, :]


def _head_arguments(head: tuple[FeatureSpace, np.ndarray, np.ndarray] | None) -> dict[str, object]:
    if head is None:
        return {}
    space, weight, bias = head
    return {
        "head_space": space,
        "head_weight": np.asarray(weight, np.float32),
        "head_bias": np.asarray(bias, np.float32),
    }


def _space_arrays(prefix: str, space: FeatureSpace) -> dict[str, np.ndarray]:
    arrays = {f"{prefix}_mean": space.mean, f"{prefix}_components": space.components}
    for name, mean in space.view_means.items():
        arrays[f"{prefix}_{name}_mean"] = mean
    return arrays


def _space_from(arrays: dict[str, np.ndarray], prefix: str, views: object) -> FeatureSpace:
    known = ([EMBEDDING_VIEW], [EMBEDDING_VIEW, HOG_VIEW], [EMBEDDING_VIEW, HOG_VIEW, OUTLINE_VIEW])
    if not isinstance(views, list) or views not in known:
        raise ValueError(f"unknown views {views!r}")
    return FeatureSpace(
        tuple(views),
        arrays[f"{prefix}_mean"].astype(np.float32),
        arrays[f"{prefix}_components"].astype(np.float32),
        {name: arrays[f"{prefix}_{name}_mean"] for name in views[1:]},
    )


def _as_views(
    data: Mapping[str, np.ndarray] | Embeddings | np.ndarray, needed: tuple[str, ...]
) -> Mapping[str, np.ndarray]:
    """The views of the rows in ``data``; for ``Embeddings`` of image files, the hand-made views are made from the
    files when needed, as the run made them beside the same network."""
    if isinstance(data, np.ndarray):
        return {EMBEDDING_VIEW: data}
    if not isinstance(data, Embeddings):
        return data
    views = {EMBEDDING_VIEW: data.vectors}
    if set(needed) & set(HANDMADE_VIEWS) and data.names_files:
        from pixclust.embedding.extraction import embed
        from pixclust.embedding.models import hog_model_for

        network = (data.model.model if data.model is not None else None) or ""
        hog_model = hog_model_for(network, outline=OUTLINE_VIEW in needed)
        hog = embed(data.paths, model=hog_model)
        row_of = {path: row for row, path in enumerate(hog.paths)}
        missing = [path for path in data.paths if path not in row_of]
        if missing:
            raise UsageError(f"{missing[0]} gave no HOG vector (see the reason with pixclust.embed); leave it out")
        views |= handmade_views(hog.vectors[[row_of[path] for path in data.paths]])
    return views
