"""``pixclust cluster-shards``: a run folder for embeddings clustered on Ray, which no process holds whole.

The run folder gets ``cluster_table/`` (one Parquet file per part of the
input: path, cluster_id, distance, novel, x, y; and ``summary.json``),
``cluster_model.npz`` (to place new embeddings later) and, up to
``CSV_MAX_ROWS`` rows, ``clusters.csv``, written from the table one part at a
time. Only this process writes the folder: the Ray tasks hand their tables
back to it. Everything is written under the folder's lock, the table into a
staging folder swapped in whole, so a killed run leaves the previous table
or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pixclust.atomic import atomic_path, write_text_atomic
from pixclust.clustering.views import HOG_VIEW
from pixclust.curation.export import cluster_names
from pixclust.distributed.clusterer import ShardedClusterer
from pixclust.distributed.parts import VectorParts
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S
from pixclust.embedding.engines.ray import ray_session
from pixclust.embedding.part_store import has_parts_index
from pixclust.errors import UsageError
from pixclust.names import unescape_name, write_csv
from pixclust.progress import progress_bar, quietly
from pixclust.runs.folder import (
    CLUSTER_MODEL_FILE,
    CLUSTER_TABLE_DIR,
    CLUSTER_TABLE_SUMMARY,
    CLUSTERS_CSV,
    EMBEDDINGS_FILE,
    FILE,
    RUN_JSON,
    VIEWS_DIR,
    RunFolder,
    is_run_folder,
)
from pixclust.runs.record import json_plain
from pixclust.runs.sharded_hog import hog_parts_of

# clusters.csv is written up to this many rows (about 100 MB); above it the table's Parquet files are the result.
CSV_MAX_ROWS = 1_000_000
SUMMARY_FORMAT = "pixclust-cluster-table"
CSV_COLUMNS = ("path", "cluster", "cluster_id", "distance", "silhouette", "x", "y", "novel")


@dataclass(frozen=True)
class ShardedRun:
    """What :func:`cluster_shards` wrote: ``run_dir``, and the summary it saved as ``cluster_table/summary.json``."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def n_clusters(self) -> int:
        return int(self.summary["clusters"])


def cluster_shards(
    vectors: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    k: int | str = "auto",
    pipeline: str = "auto",
    k_range: tuple[int, int] = (2, 20),
    sample_size: int | None = None,
    random_state: int = 0,
    hog: str | Path | Sequence[str | Path] | None = None,
    address: str | None = None,
    ray_wait: float = DEFAULT_RAY_WAIT_S,
    quiet: bool = False,
) -> ShardedRun:
    """Cluster the embeddings in ``vectors`` (Parquet files of path and vector rows, or folders of them) on Ray
    into the run folder ``out``; see :class:`~pixclust.distributed.clusterer.ShardedClusterer` for the method.

    ``hog`` is the same images' HOG vectors in the same order (a run's ``views/hog/``), which the
    default pipeline may join to the embedding as ``pixclust cluster`` does (on the digits it does);
    given a run folder as ``vectors``, its ``embeddings.parquet`` (or ``embed-shards`` parts) and HOG vectors are used.
    ``address`` is the Ray cluster's (None: the one ``ray start`` made on this
    machine, ``RAY_ADDRESS``, an instance this program already started, or a
    local one started for the call and stopped after it); ``ray_wait`` is how long the run may find
    the cluster without a CPU (none joined yet, or every node lost) before it stops.
    """
    started_at = time.perf_counter()
    data = VectorParts.plan(vectors)
    hog = hog if hog is not None or pipeline != "auto" else _hog_of_run(vectors)
    hog_data = None if hog is None else VectorParts.plan(hog)
    clusterer = ShardedClusterer(
        k=k,
        pipeline=pipeline,
        k_range=k_range,
        sample_size=sample_size,
        random_state=random_state,
        ray_wait=ray_wait,
    )
    clusterer.check(data.n_rows)
    folder = RunFolder.open(out)
    for given in (data, hog_data):
        if given is not None:
            refuse_inputs_inside(given, folder.root)
    refuse_local_run(folder, out)
    with ray_session(address) as ray, folder.writing():
        # Again under the lock: a 'pixclust cluster' may have finished there since.
        refuse_local_run(folder, out)
        folder.check_replaceable(CLUSTER_TABLE_DIR)
        with (
            folder.staging() as staging,
            quietly(quiet),
            progress_bar("placing parts", len(data.parts), unit="parts") as advance,
        ):
            written: list[str] = []

            def save_part(index: int, table: Any) -> None:
                name = f"part-{index:05d}.parquet"
                with atomic_path(staging / name) as temporary:
                    pq.write_table(table, temporary)
                written.append(name)
                advance(1)

            clusterer.fit(data, save_part, ray=ray, hog=hog_data)
            summary = _summary(clusterer, data, hog_data, sorted(written), time.perf_counter() - started_at)
            write_text_atomic(staging / CLUSTER_TABLE_SUMMARY, json.dumps(summary, indent=2) + "\n")
            entries = [(f"{CLUSTER_TABLE_DIR}/{name}", FILE) for name in [*sorted(written), CLUSTER_TABLE_SUMMARY]]
            folder.swap_in(staging, CLUSTER_TABLE_DIR, entries)
        folder.claim_files([CLUSTER_MODEL_FILE])
        clusterer.model_.save(folder.path(CLUSTER_MODEL_FILE))
        if data.n_rows <= CSV_MAX_ROWS:
            names = cluster_names(np.arange(clusterer.n_clusters_))
            table_dir = folder.path(CLUSTER_TABLE_DIR)
            write_csv(
                folder.path(CLUSTERS_CSV),
                CSV_COLUMNS,
                _csv_rows([table_dir / name for name in sorted(written)], names),
                text=("path", "cluster"),
            )
        else:
            folder.remove_managed_file(CLUSTERS_CSV)
    return ShardedRun(folder.root, summary)


def _hog_of_run(vectors: str | Path | Sequence[str | Path]) -> Path | None:
    """A run folder's HOG vectors (``views/hog/``), when the input is one run folder (or the parts of one) that
    has them: given alone, or as the one item of a list, as the command line gives it."""
    given = [vectors] if isinstance(vectors, (str, Path)) else list(vectors)
    if len(given) != 1:
        return None
    (folder,) = given
    if has_parts_index(folder):
        return hog_parts_of(folder)
    if not is_run_folder(folder):
        return None
    hog = Path(folder) / VIEWS_DIR / HOG_VIEW / EMBEDDINGS_FILE
    return hog if hog.is_file() else None


def refuse_local_run(folder: RunFolder, out: str | Path) -> None:
    if os.path.lexists(folder.path(RUN_JSON)):
        raise UsageError(f"{out} holds a run of 'pixclust cluster' (run.json); give another --out for a sharded run")


def refuse_inputs_inside(data: VectorParts, run_dir: Path) -> None:
    inside = [file for file in data.files if os.path.realpath(file).startswith(str(run_dir) + os.sep)]
    if inside:
        raise UsageError(
            f"the embeddings {inside[0]} are inside the run folder {run_dir}, whose files pixclust replaces; "
            "choose another --out"
        )


def _summary(
    clusterer: ShardedClusterer, data: VectorParts, hog_data: VectorParts | None, parts: list[str], seconds: float
) -> dict[str, Any]:
    result = clusterer.sample_result_
    return {
        "format": SUMMARY_FORMAT,
        "version": 1,
        "inputs": list(data.files),
        "hog_inputs": None if hog_data is None else list(hog_data.files),
        "rows": data.n_rows,
        "dim": data.dim,
        "parts": parts,
        "pipeline": clusterer.pipeline,
        "k": clusterer.k,
        "clusters": clusterer.n_clusters_,
        "sizes": clusterer.counts_.tolist(),
        "novel": clusterer.novel_,
        "inertia": clusterer.inertia_,
        "sample_rows": clusterer.sample_size_,
        "sample_silhouette": None if np.isnan(result.silhouette) else float(result.silhouette),
        "method": result.method,
        "reduce": result.reduction.method,
        "pca_explained_variance_ratio": result.reduction.pca_explained_variance_ratio.tolist(),
        "k_scan": None if result.k_scan is None else result.k_scan.record(),
        "choice": json_plain(result.choice),
        "random_state": clusterer.random_state,
        "seconds": round(seconds, 1),
        "timings": {name: round(value, 1) for name, value in clusterer.timings_.items()},
    }


def _csv_rows(files: list[Path], names: dict[int, str]) -> Iterator[tuple[Any, ...]]:
    for file in files:
        table = pq.read_table(file)
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        for path, label, distance, x, y, novel in zip(
            columns["path"],
            columns["cluster_id"],
            columns["distance"],
            columns["x"],
            columns["y"],
            columns["novel"],
            strict=True,
        ):
            yield unescape_name(path), names[label], label, f"{distance:.6f}", "", f"{x:.6f}", f"{y:.6f}", int(novel)
