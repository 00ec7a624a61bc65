"""The space and the groups that labelling by example reasons over.

A run folder made by ``pixclust cluster`` already holds both: the features it
clustered (the network's embedding, joined with HOG where the run chose it,
projected by the run's PCA) and a cluster for every image. Labelling reuses
them, so the classes follow the same groups the report shows, and grey shape
images get the HOG view their clustering found useful. Vectors without a run
(an ``.npy``, or a run clustered by an older pixclust) are clustered here as
``pixclust cluster`` would cluster them (without HOG, which needs the pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.clustering.reduce import l2_normalize
from pixclust.embeddings import Embeddings


@dataclass(frozen=True)
class Structure:
    """``features``: N x d unit rows to measure images in; ``clusters``: a group id per image (-1: in none).

    ``source`` says where they came from: ``run`` (the run's clustering) or ``own`` (made here).
    """

    features: np.ndarray
    clusters: np.ndarray
    source: str

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max()) + 1 if len(self.clusters) and self.clusters.max() >= 0 else 0


def own_structure(vectors: np.ndarray, *, random_state: int = 0) -> Structure:
    """What ``pixclust cluster`` would make of the vectors alone: its default clustering and the space it clustered in."""
    from pixclust.clustering.views import EMBEDDING_VIEW
    from pixclust.runs.pipeline import cluster

    result = cluster(vectors, random_state=random_state)
    if result.model is None:
        features = l2_normalize(np.asarray(vectors, np.float64) - np.mean(vectors, axis=0))
    else:
        features = l2_normalize(result.model.space.transform({EMBEDDING_VIEW: np.asarray(vectors, np.float32)}))
    return Structure(features.astype(np.float32), result.labels.astype(np.int64), "own")


def run_structure(run_dir: Path, embeddings: Embeddings) -> Structure | None:
    """The run's clustering space and clusters for ``embeddings``' rows; None where the run does not hold them.

    None when the run has no cluster model or clusters.csv (embedded only, or an older pixclust), when
    clusters.csv does not list every stored image, or when a view the model needs is not stored.
    """
    from pixclust.clustering.placement import ClusterModel
    from pixclust.clustering.views import EMBEDDING_VIEW, HOG_VIEW, handmade_views
    from pixclust.curation.export import read_clusters_csv
    from pixclust.embedding.store import EmbeddingStore
    from pixclust.errors import UsageError
    from pixclust.runs.folder import CLUSTER_MODEL_FILE, CLUSTERS_CSV, VIEWS_DIR

    if not (run_dir / CLUSTER_MODEL_FILE).is_file() or not (run_dir / CLUSTERS_CSV).is_file():
        return None
    try:
        model = ClusterModel.load(run_dir / CLUSTER_MODEL_FILE)
        table = read_clusters_csv(run_dir / CLUSTERS_CSV)
    except (UsageError, OSError, KeyError, ValueError):
        return None
    if any(path not in table for path in embeddings.paths):
        return None
    views = {EMBEDDING_VIEW: embeddings.vectors}
    if HOG_VIEW in model.space.views:
        hog_dir = run_dir / VIEWS_DIR / HOG_VIEW
        if not hog_dir.is_dir():
            return None
        hog = EmbeddingStore(hog_dir).load()
        row_of = {path: row for row, path in enumerate(hog.paths)}
        if any(path not in row_of for path in embeddings.paths):
            return None
        rows = hog.vectors[[row_of[path] for path in embeddings.paths]]
        views |= handmade_views(rows)
    features = l2_normalize(model.space.transform(views))
    clusters = np.array([_cluster_id(table[path].get("cluster_id")) for path in embeddings.paths], dtype=np.int64)
    return Structure(features.astype(np.float32), clusters, "run")


def _cluster_id(cell: str | None) -> int:
    """The id clusters.csv gives; -1 for noise, an image ``add`` found new, or a cell edited into a non-number."""
    try:
        return int(cell) if cell not in (None, "") else -1
    except ValueError:
        return -1
