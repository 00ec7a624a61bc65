"""A finished run as the report reads it back from its folder, rows in the embeddings' order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixclust.curation.export import cluster_names, number_cell, read_clusters_csv, read_errors_csv
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.store import EmbeddingStore
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.names import from_cell
from pixclust.runs.folder import (
    CLUSTERS_CSV,
    EMBEDDINGS_FILE,
    ERRORS_CSV,
    RUN_JSON,
)
from pixclust.runs.record import RunRecord


@dataclass
class RunView:
    """What the report needs from a finished run, rows in embeddings order."""

    run_dir: Path
    record: RunRecord
    embeddings: Embeddings
    labels: np.ndarray
    distances: np.ndarray
    silhouettes: np.ndarray
    errors: list[SkippedFile]
    # The name clusters.csv gives each cluster id (images placed by `pixclust add` as novel: -1, "_new").
    cluster_of_label: dict[int, str] = field(default_factory=dict)
    # Each image's quality flags (clusters.csv's flags, split) and their severity (NaN when clean or unknown).
    flags: list[tuple[str, ...]] = field(default_factory=list)
    flag_scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    # What each cluster shows (clusters.csv's name column), by cluster id; none for a run without names.
    descriptions: dict[int, str] = field(default_factory=dict)
    # A view of a sample (report.sharded_view): the run's size, and its clusters' sizes by cluster id.
    sample_of: int | None = None
    run_sizes: dict[int, int] = field(default_factory=dict)
    # What the caches (maps, thumbnails) know each row by, where it is not the content hash.
    cache_keys: list[str] | None = None

    @property
    def paths(self) -> list[str]:
        return self.embeddings.paths

    @property
    def hashes(self) -> list[str]:
        """Each row's key in the report's caches: its content hash (or ``cache_keys``)."""
        return self.cache_keys if self.cache_keys is not None else self.embeddings.content_hashes

    def size(self, label: int) -> int:
        """Images in cluster ``label``: in the whole run (which a sample's view knows), else in the view."""
        return self.run_sizes.get(label, int(np.sum(self.labels == label)))

    @property
    def vectors(self) -> np.ndarray:
        return self.embeddings.vectors

    @property
    def names(self) -> dict[int, str]:
        return cluster_names(self.labels) | self.cluster_of_label

    def members(self, label: int) -> np.ndarray:
        """Rows of one cluster, most typical (closest to the centre) first."""
        rows = np.flatnonzero(self.labels == label)
        return rows[np.argsort(np.nan_to_num(self.distances[rows], nan=np.inf), kind="stable")]


def load_run(run_dir: str | Path, record: RunRecord | None = None, embeddings: Embeddings | None = None) -> RunView:
    """The run folder's embeddings, clusters, errors and record; ``embeddings``, when the caller holds them, are not read again."""
    run_dir = Path(run_dir)
    for needed in (EMBEDDINGS_FILE, CLUSTERS_CSV):
        if not (run_dir / needed).is_file():
            raise UsageError(f"{run_dir} has no {needed}; run 'pixclust cluster FOLDER --out {run_dir}' first")
    if embeddings is None:
        embeddings = EmbeddingStore(run_dir).load()
    rows = read_clusters_csv(run_dir / CLUSTERS_CSV)
    missing = [path for path in embeddings.paths if path not in rows]
    if missing:
        raise UsageError(
            f"{run_dir / CLUSTERS_CSV} does not list {missing[0]}; re-run pixclust cluster for this folder"
        )
    ordered = [rows[path] for path in embeddings.paths]
    errors = read_errors_csv(run_dir / ERRORS_CSV)
    if record is None:
        # A run that stopped before run.json was written still has its vectors and clusters to show.
        record = RunRecord.read(run_dir / RUN_JSON) if (run_dir / RUN_JSON).is_file() else RunRecord(model={})
    return RunView(
        run_dir=run_dir,
        record=record,
        embeddings=embeddings,
        labels=np.array([int(row["cluster_id"]) for row in ordered], dtype=np.int64),
        distances=np.array([number_cell(row["distance"]) for row in ordered]),
        silhouettes=np.array([number_cell(row.get("silhouette", "")) for row in ordered]),
        errors=errors,
        cluster_of_label={int(row["cluster_id"]): row["cluster"] for row in ordered},
        # A run from before quality flags has no such columns: no flags to show.
        flags=[tuple(filter(None, (row.get("flags") or "").split(";"))) for row in ordered],
        flag_scores=np.array([number_cell(row.get("flag_score") or "") for row in ordered]),
        descriptions={int(row["cluster_id"]): from_cell(row["name"]) for row in ordered if row.get("name")},
    )
