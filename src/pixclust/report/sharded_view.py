"""A run of ``pixclust cluster-shards`` as the report reads it: a uniform sample of its rows.

A page of ten million images would not open in a browser, and their maps and
thumbnails would take hours. The report of a sharded run shows
``REPORT_SAMPLE`` rows drawn uniformly (each cluster keeps its share, up to
sampling noise): their clusters and distances from the run's table, their
vectors (for the maps) and image facts from the embeddings it clustered, of
which only the row groups holding sampled rows are read. Cluster sizes are
the whole run's. Duplicates and quality flags are not looked for in a sample
(the page says so): ``pixclust duplicates-shards`` searches every row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pixclust.curation.export import cluster_names
from pixclust.distributed.clusterer import sample_indices
from pixclust.distributed.parts import PATH_COLUMN, VectorParts, part_vectors
from pixclust.embeddings import VECTOR_COLUMN, Embeddings
from pixclust.errors import UsageError
from pixclust.names import unescape_name
from pixclust.report.run_view import RunView
from pixclust.runs.folder import CLUSTER_TABLE_DIR, CLUSTER_TABLE_SUMMARY
from pixclust.runs.record import RunRecord

# Rows a sharded run's report shows: the size of page a browser opens at once, and maps fitted in a minute.
REPORT_SAMPLE = 20_000
# The columns of pixclust's store that the report shows where the embeddings have them.
_IMAGE_COLUMNS = ("content_hash", "width", "height", "file_size", "mtime_ns")


def load_sharded_run(run_dir: str | Path, *, sample_size: int | None = None, random_state: int = 0) -> RunView:
    """A :class:`RunView` of ``sample_size`` rows (None: ``REPORT_SAMPLE``) of the sharded run in ``run_dir``,
    drawn uniformly."""
    run_dir = Path(run_dir)
    summary = _summary(run_dir)
    n_rows = int(summary["rows"])
    chosen = sample_indices(n_rows, min(n_rows, sample_size or REPORT_SAMPLE), random_state)
    placed = _table_rows([run_dir / CLUSTER_TABLE_DIR / name for name in summary["parts"]], chosen)
    data = VectorParts.plan(summary["inputs"])
    if data.n_rows != n_rows:
        raise UsageError(
            f"the embeddings {run_dir} was clustered from now hold {data.n_rows:,} rows, not {n_rows:,}; "
            "run 'pixclust cluster-shards' again"
        )
    columns = [PATH_COLUMN, VECTOR_COLUMN, *(name for name in _IMAGE_COLUMNS if name in data.columns)]
    rows = data.read_rows(chosen, columns=columns)
    if not rows.column(PATH_COLUMN).equals(placed.column(PATH_COLUMN)):
        raise UsageError(
            f"the embeddings {run_dir} was clustered from have changed since; run 'pixclust cluster-shards' again"
        )
    embeddings = _sample_embeddings(rows, data.dim, data.files[0])
    labels = placed.column("cluster_id").to_numpy().astype(np.int64)
    sizes = dict(enumerate(int(size) for size in summary["sizes"]))
    return RunView(
        run_dir=run_dir,
        record=_record(summary),
        embeddings=embeddings,
        labels=labels,
        distances=placed.column("distance").to_numpy().astype(np.float64),
        silhouettes=np.full(len(labels), np.nan),
        errors=[],
        cluster_of_label=cluster_names(np.arange(len(sizes))),
        flags=[()] * len(labels),
        flag_scores=np.full(len(labels), np.nan),
        sample_of=n_rows,
        run_sizes=sizes,
        # Rows without a content hash (embeddings from elsewhere) are known to the caches by their path.
        cache_keys=[
            digest or "path:" + hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
            for path, digest in zip(embeddings.paths, embeddings.content_hashes, strict=True)
        ],
    )


def _summary(run_dir: Path) -> dict:
    file = run_dir / CLUSTER_TABLE_DIR / CLUSTER_TABLE_SUMMARY
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{file} cannot be read ({error}); run 'pixclust cluster-shards' again") from None
    missing = [
        key for key in ("rows", "parts", "inputs", "sizes") if not isinstance(summary, dict) or key not in summary
    ]
    if missing:
        raise UsageError(f"{file} has no {missing[0]!r}; run 'pixclust cluster-shards' again")
    return summary


def _table_rows(files: list[Path], chosen: np.ndarray) -> pa.Table:
    """Path, cluster id and distance of rows ``chosen`` (ascending) of the run's table, one file at a time."""
    tables, start = [], 0
    for file in files:
        try:
            table = pq.read_table(file, columns=[PATH_COLUMN, "cluster_id", "distance"])
        except (OSError, pa.ArrowException) as error:
            raise UsageError(f"{file} cannot be read ({error}); run 'pixclust cluster-shards' again") from None
        within = chosen[(chosen >= start) & (chosen < start + table.num_rows)] - start
        tables.append(table.take(pa.array(within)))
        start += table.num_rows
    return pa.concat_tables(tables)


def _sample_embeddings(rows: pa.Table, dim: int, file: str) -> Embeddings:
    n = rows.num_rows

    def column(name: str) -> np.ndarray:
        if name not in rows.column_names:
            return np.zeros(n, dtype=np.int64)
        return rows.column(name).to_numpy(zero_copy_only=False).astype(np.int64)

    hashes = rows.column("content_hash").to_pylist() if "content_hash" in rows.column_names else [""] * n
    return Embeddings(
        paths=[unescape_name(path) for path in rows.column(PATH_COLUMN).to_pylist()],
        vectors=part_vectors(rows, dim, file=file),
        content_hashes=[digest or "" for digest in hashes],
        file_sizes=column("file_size"),
        mtimes_ns=column("mtime_ns"),
        image_sizes=np.stack([column("width"), column("height")], axis=1),
        model_id="",
    )


def _record(summary: dict) -> RunRecord:
    """What the report shows of a run, from the table's summary: how it was clustered, on the sample it was fitted on."""
    return RunRecord(
        model={},
        config={"source": None},
        counts={"images_used": int(summary["rows"])},
        clustering={
            "method": summary.get("method", "?"),
            "reduce": summary.get("reduce", "?"),
            "n_clusters": int(summary.get("clusters", len(summary["sizes"]))),
            "silhouette": summary.get("sample_silhouette"),
            "pca_explained_variance_ratio": summary.get("pca_explained_variance_ratio"),
            "k_scan": summary.get("k_scan"),
            "pipeline": summary.get("choice"),
            "fitted_on": summary.get("sample_rows"),
        },
    )
