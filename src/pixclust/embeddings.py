"""The one data type that flows between stages: images, their vectors, and what was skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pixclust.embedding.files import SkippedFile
from pixclust.embedding.pixel_stats import IMAGE_STATS, unmeasured
from pixclust.embedding.record import ModelRecord
from pixclust.names import escape_name, unescape_name

VECTOR_COLUMN = "vector"
# Every column of ``embeddings.parquet`` but the vectors: what a row is, cheap to read on its own.
ROW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("model_id", pa.string()),
        ("file_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        # What the decoded pixels measured (pixel_stats); NaN for vectors pixclust did not make from a file.
        *((name, pa.float32()) for name in IMAGE_STATS),
    ]
)


def with_vectors(rows: pa.Table, vectors: np.ndarray) -> pa.Table:
    """``rows`` with the N x d ``vectors`` appended as the store's vector column."""
    dim = vectors.shape[1]
    # Arrow wraps a C-contiguous float32 array without copying it.
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
    return rows.append_column(arrow_schema(dim).field(VECTOR_COLUMN), pa.FixedSizeListArray.from_arrays(flat, dim))


def arrow_schema(dim: int) -> pa.Schema:
    """Columns of ``embeddings.parquet``; one row per usable image."""
    return ROW_SCHEMA.append(pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim)))


@dataclass
class Embeddings:
    """Vectors for a set of images, in a stable order, with the model that made them.

    ``model`` is the :class:`~pixclust.embedding.record.ModelRecord` of the model that
    made them (name, weights source and hash, preprocessing; None when a run
    folder's run.json is gone); ``skipped`` lists the files that could not be used and why.
    ``n_extracted`` counts the contents embedded now (identical files once), ``n_reused`` the other
    images: their vectors came from the store or from an identical file's; the two add up to the images.
    ``image_stats`` holds each image's :data:`~pixclust.embedding.pixel_stats.IMAGE_STATS`
    (NaN where unmeasured, the default).
    """

    paths: list[str]
    vectors: np.ndarray
    content_hashes: list[str]
    file_sizes: np.ndarray
    mtimes_ns: np.ndarray
    image_sizes: np.ndarray
    model_id: str
    model: ModelRecord | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    n_extracted: int = 0
    n_reused: int = 0
    image_stats: np.ndarray = None  # type: ignore[assignment]  # filled in __post_init__

    def __post_init__(self) -> None:
        if self.image_stats is None:
            self.image_stats = unmeasured(len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names_files(self) -> bool:
        """Whether every row is an image file pixclust read (precomputed vectors name none)."""
        return bool(self.paths) and all(self.content_hashes)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def take(self, rows: np.ndarray) -> Embeddings:
        """The given rows, in that order (the model record with them; no skipped files)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Embeddings(
            paths=[self.paths[row] for row in rows],
            vectors=self.vectors[rows],
            content_hashes=[self.content_hashes[row] for row in rows],
            file_sizes=self.file_sizes[rows],
            mtimes_ns=self.mtimes_ns[rows],
            image_sizes=self.image_sizes[rows],
            model_id=self.model_id,
            model=self.model,
            image_stats=self.image_stats[rows],
        )

    def followed_by(self, other: Embeddings) -> Embeddings:
        """These rows, then ``other``'s (same model); the skipped files of both."""
        if other.model_id != self.model_id:
            raise ValueError(f"cannot join embeddings of {self.model_id} and {other.model_id}")
        return Embeddings(
            paths=self.paths + other.paths,
            vectors=np.concatenate([self.vectors, other.vectors]),
            content_hashes=self.content_hashes + other.content_hashes,
            file_sizes=np.concatenate([self.file_sizes, other.file_sizes]),
            mtimes_ns=np.concatenate([self.mtimes_ns, other.mtimes_ns]),
            image_sizes=np.concatenate([self.image_sizes, other.image_sizes]),
            model_id=self.model_id,
            model=self.model or other.model,
            skipped=self.skipped + other.skipped,
            image_stats=np.concatenate([self.image_stats, other.image_stats]),
        )

    def row_table(self) -> pa.Table:
        """Every column but the vectors (:data:`ROW_SCHEMA`)."""
        n = len(self.paths)
        return pa.Table.from_arrays(
            [
                # Arrow strings must be UTF-8; a name that is not is stored escaped (pixclust.names).
                pa.array([escape_name(path) for path in self.paths], pa.string()),
                pa.array(self.content_hashes, pa.string()),
                pa.array([self.model_id] * n, pa.string()),
                pa.array(self.file_sizes, pa.int64()),
                pa.array(self.mtimes_ns, pa.int64()),
                pa.array(self.image_sizes[:, 0], pa.int32()),
                pa.array(self.image_sizes[:, 1], pa.int32()),
                *(pa.array(self.image_stats[:, column], pa.float32()) for column in range(len(IMAGE_STATS))),
            ],
            schema=ROW_SCHEMA,
        )

    def to_table(self) -> pa.Table:
        return with_vectors(self.row_table(), self.vectors)

    @classmethod
    def from_columns(cls, rows: pa.Table, vectors: np.ndarray) -> Embeddings:
        """Rebuild from :data:`ROW_SCHEMA` columns (one model_id) and the matching N x d vectors, used as given."""
        model_ids = set(rows.column("model_id").to_pylist())
        if len(model_ids) > 1:
            raise ValueError(f"table mixes embeddings of several models: {sorted(model_ids)}")
        return cls(
            paths=[unescape_name(path) for path in rows.column("path").to_pylist()],
            vectors=vectors,
            content_hashes=rows.column("content_hash").to_pylist(),
            file_sizes=rows.column("file_size").to_numpy(),
            mtimes_ns=rows.column("mtime_ns").to_numpy(),
            image_sizes=np.column_stack([rows.column("width").to_numpy(), rows.column("height").to_numpy()]),
            model_id=model_ids.pop() if model_ids else "",
            image_stats=stats_columns(rows),
        )


def stats_columns(rows: pa.Table) -> np.ndarray:
    """The :data:`IMAGE_STATS` columns of a :data:`ROW_SCHEMA` table as one N x len(IMAGE_STATS) float32 array."""
    return np.column_stack([rows.column(name).to_numpy() for name in IMAGE_STATS]).astype(np.float32, copy=False)
