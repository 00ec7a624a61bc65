"""Embeddings too many for one process's memory: Parquet files cut into parts that a task reads on its own.

The input is any set of Parquet files with a ``path`` column (text) and a
``vector`` column (fixed-size lists of float32, one length in every file):
a run folder's ``embeddings.parquet`` (a run folder given stands for it), the
parts ``pixclust embed-shards`` writes (the run folder, or its ``embeddings.parts/``,
stands for those its index names), or files a user wrote. The driver reads only the files' footers; a part is a run
of whole row groups (about ``PART_ROWS`` rows), so a task reads its part
without reading anything before it, and no process ever holds every vector.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pixclust.embedding.part_store import has_parts_index, indexed_files
from pixclust.embeddings import VECTOR_COLUMN
from pixclust.errors import UsageError
from pixclust.runs.folder import EMBEDDINGS_FILE, is_run_folder

PATH_COLUMN = "path"
# Rows per part: 65,536 vectors of 1,280 floats are 0.34 GB in a task, of 256 floats 67 MB; enough work per
# task that Ray's per-task cost (milliseconds) stays small beside it.
PART_ROWS = 65_536


@dataclass(frozen=True)
class Part:
    """Row groups ``first_group`` .. ``first_group + n_groups - 1`` of ``file``: ``rows`` rows, the first being
    row ``offset`` of the whole input."""

    file: str
    first_group: int
    n_groups: int
    rows: int
    offset: int

    @property
    def row_groups(self) -> list[int]:
        return list(range(self.first_group, self.first_group + self.n_groups))


@dataclass(frozen=True)
class Segment:
    """Rows ``skip`` .. ``skip + take - 1`` of the rows that row groups ``row_groups`` of ``file`` hold together."""

    file: str
    row_groups: tuple[int, ...]
    skip: int
    take: int


@dataclass(frozen=True)
class VectorParts:
    """The input cut into parts, in file order, with its size: ``n_rows`` vectors of ``dim`` floats.

    ``group_rows`` holds each file's row-group sizes, so that any run of rows
    can be found (:meth:`segments`) without opening a file; ``columns`` the
    columns every file has (a run's store has its images' content hashes, sizes and times).
    """

    parts: tuple[Part, ...]
    n_rows: int
    dim: int
    files: tuple[str, ...]
    group_rows: tuple[tuple[int, ...], ...]
    columns: frozenset[str] = frozenset((PATH_COLUMN, VECTOR_COLUMN))

    def segments(self, start: int, stop: int) -> tuple[Segment, ...]:
        """Where rows ``start`` .. ``stop - 1`` of the input are: one :class:`Segment` per file they span."""
        bounds, file_of_group, group_in_file = self._groups
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, stop, side="left"))
        found: list[Segment] = []
        group = first
        while group < last:
            file = int(file_of_group[group])
            end = min(last, int(np.searchsorted(file_of_group, file, side="right")))
            low, high = max(start, int(bounds[group])), min(stop, int(bounds[end]))
            found.append(
                Segment(
                    self.files[file],
                    tuple(range(int(group_in_file[group]), int(group_in_file[group]) + end - group)),
                    low - int(bounds[group]),
                    high - low,
                )
            )
            group = end
        return tuple(found)

    def read_rows(self, rows: np.ndarray, *, columns: Sequence[str] = (PATH_COLUMN, VECTOR_COLUMN)) -> pa.Table:
        """``columns`` of the input's ``rows`` (ascending), reading only the row groups that hold them."""
        bounds, file_of_group, group_in_file = self._groups
        group_of_row = np.searchsorted(bounds, rows, side="right") - 1
        groups, firsts = np.unique(group_of_row, return_index=True)
        tables = []
        for group, first, last in zip(groups.tolist(), firsts.tolist(), [*firsts[1:].tolist(), len(rows)], strict=True):
            table = _read_row_groups(self.files[int(file_of_group[group])], [int(group_in_file[group])], columns)
            within = rows[first:last] - int(bounds[group])
            if table.num_rows != int(bounds[group + 1] - bounds[group]):
                raise UsageError(f"{self.files[int(file_of_group[group])]} changed since it was planned; run again")
            tables.append(table.take(pa.array(within)))
        return pa.concat_tables(tables) if tables else _read_row_groups(self.files[0], [], columns)

    @functools.cached_property
    def _groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row group in input order: where each starts (and the end), its file, its number in the file."""
        sizes = [size for file_sizes in self.group_rows for size in file_sizes]
        bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        file_of_group = np.repeat(np.arange(len(self.files)), [len(file_sizes) for file_sizes in self.group_rows])
        group_in_file = np.concatenate([np.arange(len(file_sizes)) for file_sizes in self.group_rows])
        return bounds, file_of_group, group_in_file

    @classmethod
    def plan(cls, source: str | Path | Sequence[str | Path], *, part_rows: int = PART_ROWS) -> VectorParts:
        """Cut ``source`` (a Parquet file, a folder of them, or a list of files) into parts of about ``part_rows`` rows.

        Files are checked by their footers only: every one must hold ``path`` and
        ``vector`` columns, the vectors of one length in all. A mistake is one
        :class:`UsageError` naming the file.
        """
        files = _input_files(source)
        parts: list[Part] = []
        group_rows: list[tuple[int, ...]] = []
        dim = None
        offset = 0
        columns: frozenset[str] | None = None
        for file in files:
            metadata = _footer(file)
            schema = metadata.schema.to_arrow_schema()
            file_dim = _vector_dim(file, schema)
            columns = frozenset(schema.names) if columns is None else columns & frozenset(schema.names)
            if dim is not None and file_dim != dim:
                raise UsageError(
                    f"{file} holds vectors of {file_dim} numbers where {files[0]} holds {dim}; "
                    "give files of one model's embeddings"
                )
            dim = file_dim
            group_rows.append(tuple(metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)))
            group, n_groups = 0, metadata.num_row_groups
            while group < n_groups:
                first, rows = group, 0
                while group < n_groups and (rows == 0 or rows + metadata.row_group(group).num_rows <= part_rows):
                    rows += metadata.row_group(group).num_rows
                    group += 1
                if rows:
                    parts.append(Part(file, first, group - first, rows, offset))
                    offset += rows
        if offset == 0 or dim is None or columns is None:
            raise UsageError(f"{_described(source)} holds no embeddings; give Parquet files of path and vector rows")
        return cls(tuple(parts), offset, dim, tuple(files), tuple(group_rows), columns)


def read_part(part: Part, *, columns: Sequence[str] = (PATH_COLUMN, VECTOR_COLUMN)) -> pa.Table:
    """The part's rows (those ``columns``), read from its file; an unreadable file is a one-line :class:`UsageError`."""
    table = _read_row_groups(part.file, part.row_groups, columns)
    if table.num_rows != part.rows:
        raise UsageError(f"{part.file} changed while it was being read; run again once nothing writes it")
    return table


def read_segments(segments: Sequence[Segment], *, columns: Sequence[str] = (PATH_COLUMN, VECTOR_COLUMN)) -> pa.Table:
    """The rows the segments name, in order, as one table."""
    tables = []
    for segment in segments:
        table = _read_row_groups(segment.file, segment.row_groups, columns).slice(segment.skip, segment.take)
        if table.num_rows != segment.take:
            raise UsageError(f"{segment.file} changed while it was being read; run again once nothing writes it")
        tables.append(table)
    return pa.concat_tables(tables)


def _read_row_groups(file: str, row_groups: Sequence[int], columns: Sequence[str]) -> pa.Table:
    try:
        with pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20) as parquet:
            return parquet.read_row_groups(list(row_groups), columns=list(columns))
    except (OSError, pa.ArrowException) as error:
        raise UsageError(f"{file} cannot be read ({_first_line(error)}); check the file and run again") from None


def part_vectors(table: pa.Table, dim: int, *, file: str) -> np.ndarray:
    """The vector column of a part's table as a C-contiguous rows x ``dim`` float32 array, checked finite."""
    column = table.column(VECTOR_COLUMN).combine_chunks()
    values = column.flatten()
    if column.null_count or values.null_count:
        raise UsageError(f"{file} has empty vectors; make its embeddings again")
    vectors = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    if not np.isfinite(vectors).all():
        raise UsageError(f"{file} has vectors holding NaN or infinity; make its embeddings again")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _input_files(source: str | Path | Sequence[str | Path]) -> list[str]:
    named = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[str] = []
    for item in named:
        path = os.path.abspath(item)
        if os.path.isdir(path) and has_parts_index(path):
            # The parts of 'pixclust embed-shards' are the ones its index names: a folder may hold others it replaced.
            files.extend(indexed_files(path))
        elif os.path.isdir(path) and is_run_folder(path):
            # A run folder holds other Parquet files too (maps, thumbnails); its embeddings are one file.
            embeddings = os.path.join(path, EMBEDDINGS_FILE)
            if not os.path.isfile(embeddings):
                raise UsageError(
                    f"the run folder {item} has no {EMBEDDINGS_FILE}; run 'pixclust cluster' into it first"
                )
            files.append(embeddings)
        elif os.path.isdir(path):
            # Sorted, so that the row order, and with it a run's sample, is the same on every run.
            found = sorted(
                entry.path
                for entry in os.scandir(path)
                if entry.name.endswith(".parquet") and not entry.name.startswith(".") and entry.is_file()
            )
            if not found:
                raise UsageError(f"{item} holds no .parquet files; give a folder of embedding shards or a file")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UsageError(f"{item} is not a file or folder; give Parquet files of embeddings")
    if not files:
        raise UsageError("no embedding files given; give a Parquet file or a folder of them")
    return files


def _footer(file: str) -> pq.FileMetaData:
    try:
        return pq.read_metadata(file)
    except (OSError, pa.ArrowException) as error:
        raise UsageError(f"{file} is not a readable Parquet file ({_first_line(error)}); remove it or fix it") from None


def _vector_dim(file: str, schema: pa.Schema) -> int:
    for name in (PATH_COLUMN, VECTOR_COLUMN):
        if schema.get_field_index(name) < 0:
            raise UsageError(f"{file} has no {name!r} column; give Parquet files of path and vector rows")
    path_type = schema.field(PATH_COLUMN).type
    if not (pa.types.is_string(path_type) or pa.types.is_large_string(path_type)):
        raise UsageError(f"{file}'s path column holds {path_type}, not text")
    vector_type = schema.field(VECTOR_COLUMN).type
    if not pa.types.is_fixed_size_list(vector_type) or vector_type.value_type != pa.float32():
        raise UsageError(f"{file}'s vector column holds {vector_type}, not fixed-size lists of float")
    if vector_type.list_size < 1:
        raise UsageError(f"{file}'s vectors are empty")
    return int(vector_type.list_size)


def _described(source: str | Path | Sequence[str | Path]) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"the {len(source)} files given"


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
