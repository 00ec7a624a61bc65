"""A run's embeddings as Parquet parts that no process reads whole: ``embeddings.parts/`` and its index.

``pixclust embed-shards`` keeps a run folder's vectors here instead of in one
``embeddings.parquet``. Each part is a store file (the columns and version of
:mod:`pixclust.embedding.store`) of about :data:`PART_WRITE_ROWS` rows, named by a
random id. ``parts.json`` lists the parts that make up the embeddings, in
order, and is replaced atomically after every part it names is whole on disk,
so at every moment it names one complete set. A part it does not name (a run
killed before its index was written, or a part a later run replaced) is
pixclust's by the run folder's manifest: the next run reuses its vectors, then
removes it. Readers (``cluster-shards``, ``duplicates-shards``) go by the index
and never list the folder.

The driver reads only the parts' identity columns (path, size, time, content
hash); vectors move only inside Ray tasks (:func:`select_rows`) and from the
actors to a part being written.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pixclust.atomic import atomic_path, write_text_atomic
from pixclust.embedding.record import ModelRecord
from pixclust.embedding.store import UnusableStoreError, read_identity_rows, write_store_table
from pixclust.errors import UsageError
from pixclust.progress import warn
from pixclust.runs.folder import EMBEDDING_PARTS_DIR, RunFolder

PARTS_INDEX = "parts.json"
INDEX_FORMAT = "pixclust-embedding-parts"
INDEX_VERSION = 1
# Rows per part written: 4,096 vectors of 1,280 floats are 21 MB, what a kill -9 can lose of a run's work
# (the next run embeds them again); a part is also the unit a later run rewrites when one of its files changes.
PART_WRITE_ROWS = 4096
_PART_NAME = re.compile(r"part-[0-9a-f]{32}\.parquet")
# What atomic_path leaves of a part a kill interrupted.
_PART_LEFTOVER = re.compile(r"\.part-[0-9a-f]{32}\.parquet\.[^/]*\.tmp")


@dataclass(frozen=True)
class PartRows:
    """A stored part: its file name, and its rows' identity (``path`` as stored, ``content_hash``, ``file_size``,
    ``mtime_ns``)."""

    name: str
    rows: pa.Table


@dataclass(frozen=True)
class Rewrite:
    """Rows ``rows`` of part ``source`` (a row may come twice), to be written as a new part under these paths,
    sizes and times: the files of the run that the part holds, and copies of them found at other paths."""

    source: str
    rows: list[int]
    paths: list[str]
    file_sizes: list[int]
    mtimes_ns: list[int]


@dataclass(frozen=True)
class PartLayout:
    """How the stored parts become the run's embeddings: parts kept whole (``keep``), in order, and parts
    written anew from others (``rewrites``); a part in neither is no longer needed."""

    keep: list[str]
    rewrites: list[Rewrite]


def plan_layout(parts: Sequence[PartRows], files: Sequence[tuple[str, str, int, int]]) -> PartLayout:
    """Which parts hold the images ``files`` (stored path, content hash, size, mtime; each path once).

    Each file takes the stored row of the same path, hash, size and time in the
    first part that has one (parts are given in order of preference: those in the
    index first), else any stored row of the same content (a copy or a moved
    file: its vector is reused under the new path). A part whose every row is
    taken as it is, once each and in order, is kept whole; one with only some of
    its rows taken, or with copies, is rewritten; one with none is dropped.
    Raises ``KeyError`` for a file whose content no part holds.
    """
    exact: dict[tuple[str, str, int, int], tuple[int, int]] = {}
    by_content: dict[str, tuple[int, int]] = {}
    for index, part in enumerate(parts):
        columns = [part.rows.column(name).to_pylist() for name in ("path", "content_hash", "file_size", "mtime_ns")]
        for row, key in enumerate(zip(*columns, strict=True)):
            exact.setdefault(key, (index, row))
            by_content.setdefault(key[1], (index, row))
    taken: list[list[tuple[int, tuple[str, str, int, int]]]] = [[] for _ in parts]
    as_is = [True] * len(parts)
    for file in files:
        found = exact.get(file)
        if found is None:
            found = by_content[file[1]]
            as_is[found[0]] = False
        taken[found[0]].append((found[1], file))
    keep, rewrites = [], []
    for index, part in enumerate(parts):
        chosen = sorted(taken[index], key=lambda item: item[0])
        if as_is[index] and [row for row, _ in chosen] == list(range(part.rows.num_rows)):
            keep.append(part.name)
        elif chosen:
            rewrites.append(
                Rewrite(
                    part.name,
                    [row for row, _ in chosen],
                    [file[0] for _, file in chosen],
                    [file[2] for _, file in chosen],
                    [file[3] for _, file in chosen],
                )
            )
    return PartLayout(keep, rewrites)


def parts_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EMBEDDING_PARTS_DIR


def has_parts_index(folder: str | Path) -> bool:
    """Whether ``folder`` is a run folder with embedding parts, or such a run's ``embeddings.parts/`` itself."""
    return os.path.isfile(parts_dir(folder) / PARTS_INDEX) or os.path.isfile(Path(folder) / PARTS_INDEX)


def indexed_files(folder: str | Path) -> list[str]:
    """The part files the index names, in order; ``folder`` is a run folder or its ``embeddings.parts/``."""
    directory, index = _index_of(folder)
    files = []
    for part in index["parts"]:
        file = directory / part["name"]
        if os.path.islink(file) or not os.path.isfile(file):
            raise UsageError(
                f"{file}, named by {directory / PARTS_INDEX}, is missing or a link; run 'pixclust embed-shards' "
                "into its run folder again"
            )
        files.append(str(file))
    return files


def parts_model(folder: str | Path) -> ModelRecord:
    """The record of the model that made the parts (``folder`` as for :func:`indexed_files`)."""
    directory, index = _index_of(folder)
    record = index.get("model_record")
    if not isinstance(record, dict):
        raise UsageError(
            f"{directory / PARTS_INDEX} does not say which model made the vectors; run 'pixclust embed-shards' again"
        )
    return ModelRecord.from_dict(record)


def _index_of(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    directory = parts_dir(folder) if os.path.isfile(parts_dir(folder) / PARTS_INDEX) else Path(folder)
    index = read_index(directory)
    if index is None:
        raise UsageError(f"{directory} has no {PARTS_INDEX}; run 'pixclust embed-shards' into its run folder again")
    return directory, index


def read_index(directory: Path) -> dict[str, Any] | None:
    """The index in ``directory`` (checked), or None when there is none."""
    file = directory / PARTS_INDEX
    if not os.path.lexists(file):
        return None
    try:
        if os.path.islink(file):
            raise ValueError("it is a link")
        index = json.loads(file.read_text(encoding="utf-8"))
        if index.get("format") != INDEX_FORMAT or index.get("version") != INDEX_VERSION:
            raise ValueError("not an index this pixclust writes")
        if not all(isinstance(part.get("name"), str) and _PART_NAME.fullmatch(part["name"]) for part in index["parts"]):
            raise ValueError("a part name pixclust never writes")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(
            f"{file} is damaged ({error}); run 'pixclust embed-shards' into its run folder again, which rewrites it"
        ) from None
    return index


def stored_parts(folder: RunFolder, model_id: str, dim: int) -> list[PartRows]:
    """Every part pixclust wrote in the run folder with rows of ``model_id``: those the index names first,
    in its order, then the rest (left by a run that stopped before its index), by name.

    A part that cannot be used (damaged, another vector length, a link) is passed over with one warning;
    its images are embedded again. A damaged index is passed over too (the parts are still known by the
    manifest): the run writes a new one.
    """
    directory = parts_dir(folder.root)
    try:
        index = read_index(directory)
    except UsageError:
        warn(f"{directory / PARTS_INDEX} is damaged; a new one is written from the parts pixclust made")
        index = None
    listed = [part["name"] for part in index["parts"]] if index else []
    owned = {name.rsplit("/", 1)[1] for name in folder.files_under(EMBEDDING_PARTS_DIR)}
    names = [name for name in listed if name in owned]
    names += sorted(name for name in owned if _PART_NAME.fullmatch(name) and name not in set(listed))
    found, unusable = [], []
    for name in names:
        file = directory / name
        if not os.path.lexists(file):
            continue
        try:
            if os.path.islink(file):
                raise UnusableStoreError("a link")
            rows = read_identity_rows(file, model_id, dim)
        except UnusableStoreError as why:
            unusable.append(f"{name}: {why}")
            continue
        if rows.num_rows:
            found.append(PartRows(name, rows))
    if unusable:
        more = f"; and {len(unusable) - 1} more" if len(unusable) > 1 else ""
        warn(f"embedding parts in {directory} cannot be used ({unusable[0]}{more}); their images are embedded again")
    return found


def write_part(folder: RunFolder, table: pa.Table, *, name: str | None = None) -> str:
    """Write store rows as a new part of the run folder (listed in its manifest first, written atomically),
    named ``name`` (another view's part it mirrors) or by a new random id."""
    name = name or f"part-{uuid.uuid4().hex}.parquet"
    relative = f"{EMBEDDING_PARTS_DIR}/{name}"
    folder.claim_files([relative])
    with atomic_path(folder.path(relative)) as temporary:
        write_store_table(table, temporary)
    return name


def select_rows(file: str, rewrite: Rewrite) -> pa.Table:
    """The rows a :class:`Rewrite` names, read from their part, under their new paths (run in a Ray task)."""
    try:
        table = pq.read_table(file)
        if table.num_rows <= max(rewrite.rows):
            raise ValueError(f"{table.num_rows} rows where row {max(rewrite.rows)} was planned")
    except (OSError, ValueError, pa.ArrowException) as error:
        raise UsageError(f"{file} changed or cannot be read ({error}); run the same command again") from None
    return with_files(table, rewrite.rows, rewrite.paths, rewrite.file_sizes, rewrite.mtimes_ns)


def with_files(
    table: pa.Table, rows: Sequence[int], paths: Sequence[str], file_sizes: Sequence[int], mtimes_ns: Sequence[int]
) -> pa.Table:
    """Rows ``rows`` of the store rows ``table`` (a row may come twice), each under its new path (as stored),
    size and time."""
    table = table.take(pa.array(rows))
    for name, values, kind in (
        ("path", paths, pa.string()),
        ("file_size", file_sizes, pa.int64()),
        ("mtime_ns", mtimes_ns, pa.int64()),
    ):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, kind))
    return table


def commit_index(folder: RunFolder, parts: Sequence[tuple[str, int]], record: dict[str, Any]) -> None:
    """Make ``parts`` (name, rows) the run's embeddings: the index replaced in one step, with ``record`` beside them."""
    relative = f"{EMBEDDING_PARTS_DIR}/{PARTS_INDEX}"
    folder.claim_files([relative])
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        **record,
        "rows": sum(rows for _, rows in parts),
        "parts": [{"name": name, "rows": rows} for name, rows in parts],
    }
    write_text_atomic(folder.path(relative), json.dumps(index, indent=1) + "\n")


def remove_unindexed(folder: RunFolder, keep: set[str]) -> None:
    """Remove the parts pixclust wrote that ``keep`` does not name, and what killed writes of parts left."""
    for relative in folder.files_under(EMBEDDING_PARTS_DIR):
        name = relative.rsplit("/", 1)[1]
        if _PART_NAME.fullmatch(name) and name not in keep:
            folder.remove_file(relative)
    directory = parts_dir(folder.root)
    if directory.is_dir() and not directory.is_symlink():
        for entry in os.scandir(directory):
            if _PART_LEFTOVER.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
