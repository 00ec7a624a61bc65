"""Embeddings on disk: one Parquet file per run, partial shards while extracting, cache look-ups.

A vector is reused when the same bytes (content hash) were embedded by the
same model id (weights + preprocessing). Looking up a file's hash is free when
its path, size and modification time match a stored row; otherwise the file
is read and hashed. While extracting, finished batches go to uniquely named
shards in ``embeddings.partial/`` so that an interrupted run resumes from them;
the final ``embeddings.parquet`` replaces them atomically.

Every file carries :data:`STORE_VERSION` in its Parquet schema metadata.
Version 2 added each image's pixel stats (:mod:`pixclust.embedding.pixel_stats`),
which only a decode can give: a file of version 1, or without a version
(pixclust before versions), is made again once, like a file that cannot be used
(unreadable, other columns, vectors that are not finite float32s of the
model's dimension, a version this pixclust does not know): passed over with
one warning, its vectors made again and the save replacing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pixclust.atomic import atomic_path
from pixclust.embedding.files import REASON_UNREADABLE, SkippedFile, open_regular
from pixclust.embedding.pixel_stats import IMAGE_STATS, unmeasured
from pixclust.embeddings import ROW_SCHEMA, VECTOR_COLUMN, Embeddings, stats_columns
from pixclust.errors import DecodeError, UsageError
from pixclust.names import unescape_name
from pixclust.progress import warn
from pixclust.runs.folder import EMBEDDINGS_FILE, PARTIAL_DIR

_HASH_CHUNK = 1 << 20
# Rows per Parquet row group when writing and per batch when reading: about 5 MB of 1,280-float
# vectors. Measured on 70,000 of them, reading took 0.17 GB beside the result at 4,096 rows, 0.09 at 1,024.
BATCH_ROWS = 1024
STORE_VERSION = 2
VERSION_KEY = b"pixclust_store_version"
# What a row is; the rest of a row (vector, pixel stats) follows from its content hash and model id.
_IDENTITY_COLUMNS = [name for name in ROW_SCHEMA.names if name not in IMAGE_STATS]
# What a file without a version says it is: pixclust before versions wrote version 1's columns.
_BEFORE_STATS = b"1"


def content_hash(path: str | Path) -> str:
    """BLAKE2b-128 of the file's bytes: fast, and collision-safe for any photo archive."""
    digest = hashlib.blake2b(digest_size=16)
    # Only a regular file: one swapped for a FIFO since discovery would block an open() for ever.
    with open_regular(path) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str, known: Mapping[tuple[str, int, int], str]) -> tuple[str, tuple[int, int]] | SkippedFile:
    """The file's content hash and (size, mtime), the hash taken from ``known`` when path, size and mtime
    match; or why the file cannot be used."""
    try:
        status = os.stat(path)
        stat = (status.st_size, status.st_mtime_ns)
        digest = known.get((path, *stat)) or content_hash(path)
        return digest, stat
    except OSError as error:
        return SkippedFile(path, REASON_UNREADABLE, f"cannot read the file ({error.strerror or error})")
    except DecodeError as error:
        return SkippedFile(path, error.reason, error.detail)


@dataclass(frozen=True)
class StoredVector:
    vector: np.ndarray
    width: int
    height: int
    stats: np.ndarray


def hashes_by_stat(rows: pa.Table) -> dict[tuple[str, int, int], str]:
    """Stored content hashes by (path, size, mtime), from rows with the store's path, size, time and hash columns."""
    paths, sizes, mtimes, hashes = (
        rows.column(name).to_pylist() for name in ("path", "file_size", "mtime_ns", "content_hash")
    )
    # Keyed by the name as discovery gives it, so a name that is not UTF-8 is not hashed again on every run.
    return {
        (unescape_name(path), size, mtime): digest
        for path, size, mtime, digest in zip(paths, sizes, mtimes, hashes, strict=True)
    }


@dataclass
class KnownEmbeddings:
    """What a run folder already holds for one model id: its rows, and their vectors in one array."""

    hash_by_stat: dict[tuple[str, int, int], str] = field(default_factory=dict)
    content_hashes: list[str] = field(default_factory=list)
    row_of_hash: dict[str, int] = field(default_factory=dict)
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    image_sizes: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int32))
    image_stats: np.ndarray = field(default_factory=lambda: unmeasured(0))

    @classmethod
    def from_columns(cls, rows: pa.Table, vectors: np.ndarray) -> KnownEmbeddings:
        """Rows (:data:`ROW_SCHEMA` columns) and their vectors; a hash stored twice maps to its last row."""
        hashes = rows.column("content_hash").to_pylist()
        return cls(
            hash_by_stat=hashes_by_stat(rows),
            content_hashes=hashes,
            row_of_hash={digest: row for row, digest in enumerate(hashes)},
            vectors=vectors,
            image_sizes=np.column_stack([rows.column("width").to_numpy(), rows.column("height").to_numpy()]),
            image_stats=stats_columns(rows),
        )

    def vector_of(self, digest: str) -> StoredVector:
        row = self.row_of_hash[digest]
        width, height = (int(v) for v in self.image_sizes[row])
        return StoredVector(self.vectors[row], width, height, self.image_stats[row])


class EmbeddingStore:
    """The embeddings of one run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    @property
    def path(self) -> Path:
        return self.run_dir / EMBEDDINGS_FILE

    @property
    def partial_dir(self) -> Path:
        return self.run_dir / PARTIAL_DIR

    def known(self, model_id: str, dim: int | None = None) -> KnownEmbeddings:
        """Rows for ``model_id`` from the final file and any shards an interrupted run left.

        Their vectors must have ``dim`` dimensions (the model's; without it, those of
        the first file read); a file that cannot be used is left out with one warning.
        """
        parts, unusable = [], []
        for file in [self.path, *self._shards()]:
            try:
                part = _read_model_rows(file, model_id, dim)
            except UnusableStoreError as why:
                unusable.append(f"{file.name}: {why}")
                continue
            if part is not None:
                parts.append(part)
                dim = part[1].shape[1]
        if unusable:
            more = f"; and {len(unusable) - 1} more files" if len(unusable) > 1 else ""
            warn(
                f"the stored embeddings in {self.run_dir} cannot be used ({unusable[0]}{more}); they are made again and replaced"
            )
        if not parts:
            return KnownEmbeddings()
        rows = pa.concat_tables([rows for rows, _ in parts])
        # Joining costs a copy of the vectors, and happens only when resuming from shards.
        vectors = parts[0][1] if len(parts) == 1 else np.concatenate([vectors for _, vectors in parts])
        return KnownEmbeddings.from_columns(rows, vectors)

    def save_partial(self, table: pa.Table) -> None:
        """Write one shard of freshly extracted rows (atomically, so a kill leaves it whole or absent)."""
        # Not numbered by the shards already there: two writers once counted the same number and lost a shard.
        # The order of shards does not matter, since a content hash has one vector per model id.
        with atomic_path(self.partial_dir / f"part-{uuid.uuid4().hex}.parquet") as tmp:
            write_store_table(table, tmp)

    def save(self, embeddings: Embeddings) -> None:
        """Replace ``embeddings.parquet`` with this run's rows, then drop the shards it supersedes."""
        with atomic_path(self.path) as tmp:
            write_store_table(embeddings.to_table(), tmp)
        # Only the shards this store writes go (and a shard's temporary file a kill left), one by one;
        # the folder goes only once empty.
        for shard in [*self._shards(), *self.partial_dir.glob(".part-*.tmp")]:
            shard.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.partial_dir.rmdir()

    def holds(self, embeddings: Embeddings) -> bool:
        """Whether ``embeddings.parquet`` already has exactly these rows, in this order, and no shards are left.

        Vectors and pixel stats are not compared: the store has one of each per model id and
        content hash, and :func:`pixclust.embedding.extraction.embed` takes every vector
        it did not extract from here, so equal rows mean equal vectors. A file
        of an older version, or with vectors of another kind, is not held: the
        save rewrites it.
        """
        if self._shards() or not self.path.is_file():
            return False
        try:
            with _open_parquet(self.path) as parquet:
                schema = parquet.schema_arrow
                _check_schema(schema, embeddings.dim)
                if (schema.metadata or {}).get(VERSION_KEY) != str(STORE_VERSION).encode():
                    return False
                saved = parquet.read(columns=_IDENTITY_COLUMNS)
        except (UnusableStoreError, OSError, pa.ArrowException):
            return False
        return saved.equals(embeddings.row_table().select(_IDENTITY_COLUMNS))

    def load(self) -> Embeddings:
        """The run's embeddings as saved by :meth:`save`; a file that cannot be used is a one-line error.

        A file from before pixel stats is read with NaN stats (no flags for its
        rows), so an older run's report, look-alikes and labels still work.
        """
        try:
            with _open_parquet(self.path) as parquet:
                has_stats = _check_schema(parquet.schema_arrow, before_stats_ok=True)
                rows = parquet.read(columns=ROW_SCHEMA.names if has_stats else _IDENTITY_COLUMNS)
                if not has_stats:
                    unmeasured = pa.array(np.full(rows.num_rows, np.nan, np.float32))
                    for name in IMAGE_STATS:
                        rows = rows.append_column(name, unmeasured)
                _check_rows(rows)
                if len(set(rows.column("model_id").to_pylist())) > 1:
                    raise UnusableStoreError("rows of several models")
                return Embeddings.from_columns(rows, _read_vectors(parquet))
        except (UnusableStoreError, OSError, pa.ArrowException) as error:
            raise UsageError(
                f"{self.path} cannot be used ({error}); run 'pixclust cluster' into {self.run_dir} again to rebuild it"
            ) from error

    def _shards(self) -> list[Path]:
        return sorted(self.partial_dir.glob("part-*.parquet")) if self.partial_dir.is_dir() else []


class UnusableStoreError(Exception):
    """Why a store file cannot be used: said in a few words inside a warning or an error."""


def write_store_table(table: pa.Table, file: Path) -> None:
    """Write store rows (:data:`ROW_SCHEMA` and the vectors) to ``file``, marked with :data:`STORE_VERSION`."""
    # One row group per BATCH_ROWS rows, so the writer buffers one group's pages, not every vector's;
    # no dictionary for the floats, which hardly ever repeat.
    versioned = table.replace_schema_metadata({VERSION_KEY: str(STORE_VERSION).encode()})
    pq.write_table(versioned, file, row_group_size=BATCH_ROWS, use_dictionary=ROW_SCHEMA.names)


def _open_parquet(file: Path) -> pq.ParquetFile:
    # Pages are read through a 1 MB buffer: by default a whole column chunk is read at once,
    # which in a file of one row group is every vector, compressed.
    return pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)


def _check_schema(schema: pa.Schema, dim: int | None = None, *, before_stats_ok: bool = False) -> bool:
    """Raise :class:`UnusableStoreError` unless ``schema`` is the store's, with ``dim``-d vectors; whether it holds pixel stats.

    ``before_stats_ok`` also takes a file of version 1 (or of no version), whose
    rows are the same but for the pixel stats: fine to read, not to reuse.
    """
    version = (schema.metadata or {}).get(VERSION_KEY, _BEFORE_STATS)
    has_stats = version == str(STORE_VERSION).encode()
    if not has_stats and not (before_stats_ok and version == _BEFORE_STATS):
        older = version.isdigit() and int(version) < STORE_VERSION
        raise UnusableStoreError(
            f"store version {version.decode(errors='replace')!r}; this pixclust writes {STORE_VERSION}"
            + (", which adds the pixel stats that quality flags read" if older else "")
        )
    for expected in ROW_SCHEMA if has_stats else [ROW_SCHEMA.field(name) for name in _IDENTITY_COLUMNS]:
        if (kind := _column_type(schema, expected.name)) != expected.type:
            raise UnusableStoreError(f"{expected.name} column of {kind}, not {expected.type}")
    kind = _column_type(schema, VECTOR_COLUMN)
    if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32() or kind.list_size < 1:
        raise UnusableStoreError(f"{VECTOR_COLUMN} column of {kind}, not fixed-size lists of float")
    if dim is not None and kind.list_size != dim:
        raise UnusableStoreError(f"vectors of {kind.list_size} dimensions where the model makes {dim}")
    return has_stats


def _column_type(schema: pa.Schema, name: str) -> pa.DataType:
    found = schema.get_all_field_indices(name)
    if len(found) != 1:
        raise UnusableStoreError(f"{len(found)} {name} columns, not 1")
    return schema.field(found[0]).type


def _check_rows(rows: pa.Table) -> None:
    empty = [name for name in rows.column_names if rows.column(name).null_count]
    if empty:
        raise UnusableStoreError(f"empty cells in {', '.join(empty)}")


def _read_model_rows(file: Path, model_id: str, dim: int | None) -> tuple[pa.Table, np.ndarray] | None:
    """The rows of ``model_id`` in ``file`` and their ``dim``-d vectors; None when there are none or the file is absent.

    Rows without pixel stats are left out. Raises :class:`UnusableStoreError` when the file cannot be read
    or its columns are not the store's;
    the vectors of a file without rows of ``model_id`` are not checked, since it may well be another model's.
    """
    if not file.is_file():
        return None
    try:
        with _open_parquet(file) as parquet:
            _check_schema(parquet.schema_arrow)
            rows = parquet.read(columns=ROW_SCHEMA.names)
            _check_rows(rows)
            # A row without pixel stats (`pixclust add` extended a run from before them) is made again, to measure it.
            measured = ~np.isnan(rows.column(IMAGE_STATS[0]).to_numpy())
            mine = pc.equal(rows.column("model_id"), model_id).to_numpy() & measured
            if not mine.any():
                return None
            _check_schema(parquet.schema_arrow, dim)
            return rows.filter(mine), _read_vectors(parquet, mine)
    except OSError as error:
        raise UnusableStoreError(f"cannot be read: {error.strerror or error}") from error
    except pa.ArrowException as error:
        raise UnusableStoreError(f"not a readable Parquet file: {str(error).splitlines()[0]}") from error


def read_identity_rows(file: Path, model_id: str, dim: int) -> pa.Table:
    """The rows of ``model_id`` in the store file ``file``, by their identity columns only (no vectors are read).

    Rows without pixel stats are left out, as :meth:`EmbeddingStore.known` leaves them out. Raises
    :class:`UnusableStoreError` when the file cannot be read, its columns are not the store's, or its vectors
    are not ``dim`` long.
    """
    try:
        with _open_parquet(file) as parquet:
            _check_schema(parquet.schema_arrow, dim)
            rows = parquet.read(columns=[*_IDENTITY_COLUMNS, IMAGE_STATS[0]])
    except OSError as error:
        raise UnusableStoreError(f"cannot be read: {error.strerror or error}") from error
    except pa.ArrowException as error:
        raise UnusableStoreError(f"not a readable Parquet file: {str(error).splitlines()[0]}") from error
    _check_rows(rows.select(_IDENTITY_COLUMNS))
    mine = pc.and_(pc.equal(rows.column("model_id"), model_id), pc.invert(pc.is_nan(rows.column(IMAGE_STATS[0]))))
    return rows.select(_IDENTITY_COLUMNS).filter(mine)


def _read_vectors(parquet: pq.ParquetFile, keep: np.ndarray | None = None) -> np.ndarray:
    """The vector column (the rows where ``keep`` is true, or all) as one C-contiguous N x d float32 array.

    Read one batch at a time and copied straight into place, so Arrow holds one
    batch beside the result: reading the whole column as one table peaked at
    1.6 GB for 70,000 x 1,280 floats (0.36 GB). The schema is checked already;
    an empty or non-finite vector raises :class:`UnusableStoreError`.
    """
    dim = parquet.schema_arrow.field(VECTOR_COLUMN).type.list_size
    if keep is None:
        keep = np.ones(parquet.metadata.num_rows, dtype=bool)
    vectors = np.empty((int(np.count_nonzero(keep)), dim), dtype=np.float32)
    read = filled = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[VECTOR_COLUMN]):
        column = batch.column(0)
        values = column.flatten()
        if column.null_count or values.null_count:
            raise UnusableStoreError("empty vectors")
        block = values.to_numpy().reshape(-1, dim)
        wanted = keep[read : read + len(block)]
        n_wanted = int(np.count_nonzero(wanted))
        kept = vectors[filled : filled + n_wanted]
        np.compress(wanted, block, axis=0, out=kept)
        if not np.isfinite(kept).all():
            raise UnusableStoreError("vectors holding NaN or infinity")
        read += len(block)
        filled += n_wanted
    # Arrow's allocator keeps the batches' freed pages for Arrow's next use; what follows allocates with NumPy.
    pa.default_memory_pool().release_unused()
    return vectors


def read_table_or_none(file: Path, columns: list[str] | None = None) -> pa.Table | None:
    """The table in ``file`` (or those ``columns`` of it), or None when it is absent or unreadable (a damaged cache is rebuilt, not fatal)."""
    if not file.is_file():
        return None
    try:
        return pq.read_table(file, columns=columns)
    except (OSError, pa.ArrowInvalid):
        return None
