"""Embeddings on disk: one Parquet file per run, partial shards while extracting, cache look-ups.

A vector is reused when the same bytes (content hash) were embedded by the
same model id (weights + preprocessing). Looking up a file's hash is free when
its path, size and modification time match a stored row; otherwise the file
is read and hashed. While extracting, finished batches go to numbered shards
in ``embeddings.partial/`` so that an interrupted run resumes from them; the
final ``embeddings.parquet`` replaces them atomically.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pixclust.atomic import atomic_path
from pixclust.embeddings import Embeddings

EMBEDDINGS_FILE = "embeddings.parquet"
PARTIAL_DIR = "embeddings.partial"
_HASH_CHUNK = 1 << 20


def content_hash(path: str | Path) -> str:
    """BLAKE2b-128 of the file's bytes: fast, and collision-safe for any photo archive."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredVector:
    vector: np.ndarray
    width: int
    height: int


@dataclass
class KnownEmbeddings:
    """What a run folder already holds for one model id."""

    hash_by_stat: dict[tuple[str, int, int], str] = field(default_factory=dict)
    by_hash: dict[str, StoredVector] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        vectors = table.column("vector").combine_chunks()
        matrix = vectors.flatten().to_numpy().reshape(-1, vectors.type.list_size)
        columns = {name: table.column(name).to_pylist() for name in ("path", "file_size", "mtime_ns", "content_hash", "width", "height")}
        for row, (path, size, mtime, digest, width, height) in enumerate(zip(*columns.values(), strict=True)):
            self.hash_by_stat[(path, size, mtime)] = digest
            self.by_hash[digest] = StoredVector(matrix[row], width, height)


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

    def known(self, model_id: str) -> KnownEmbeddings:
        """Rows for ``model_id`` from the final file and any shards an interrupted run left."""
        known = KnownEmbeddings()
        for file in [self.path, *self._shards()]:
            table = read_table_or_none(file)
            if table is not None:
                known.add(table.filter(pc.equal(table.column("model_id"), model_id)))
        return known

    def save_partial(self, table: pa.Table) -> None:
        """Write one shard of freshly extracted rows (atomically, so a kill leaves it whole or absent)."""
        index = len(self._shards())
        with atomic_path(self.partial_dir / f"part-{index:05d}.parquet") as tmp:
            pq.write_table(table, tmp)

    def save(self, embeddings: Embeddings) -> None:
        """Replace ``embeddings.parquet`` with this run's rows, then drop the shards it supersedes."""
        with atomic_path(self.path) as tmp:
            pq.write_table(embeddings.to_table(), tmp)
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    def load(self) -> Embeddings:
        """The run's embeddings as saved by :meth:`save`."""
        return Embeddings.from_table(pq.read_table(self.path))

    def _shards(self) -> list[Path]:
        return sorted(self.partial_dir.glob("part-*.parquet")) if self.partial_dir.is_dir() else []


def read_table_or_none(file: Path) -> pa.Table | None:
    """The table in ``file``, or None when it is absent or unreadable (a damaged cache is rebuilt, not fatal)."""
    if not file.is_file():
        return None
    try:
        return pq.read_table(file)
    except (OSError, pa.ArrowInvalid):
        return None
