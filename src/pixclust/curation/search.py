"""Look-alikes over stored embeddings, with the shared :class:`~pixclust.index.VectorIndex`.

Duplicates, which start from the same index, are :mod:`pixclust.curation.duplicates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.index import VectorIndex

DEFAULT_TOP = 10


@dataclass(frozen=True)
class Match:
    """One look-alike of one query: the row, its id (path), and the cosine similarity."""

    query: str
    rank: int
    row: int
    path: str
    similarity: float


def similar(
    embeddings: Embeddings,
    queries: np.ndarray,
    *,
    query_names: Sequence[str] | None = None,
    top: int = DEFAULT_TOP,
    min_similarity: float | None = None,
    exclude_rows: Sequence[int | None] | None = None,
    index: VectorIndex | None = None,
) -> list[list[Match]]:
    """The ``top`` most similar images to each query vector, best first.

    ``exclude_rows[q]`` is a row that is query ``q`` itself (when the query
    is an image already in the embeddings), left out of its own answer.
    """
    queries = query_matrix(queries, embeddings.dim, top)
    names = list(query_names) if query_names is not None else [str(q) for q in range(len(queries))]
    excluded = list(exclude_rows) if exclude_rows is not None else [None] * len(queries)
    index = index or VectorIndex(embeddings.vectors)
    sims, ids = index.search(queries, top + 1)
    answers = []
    for q, name in enumerate(names):
        found = [
            (int(row), float(sim)) for row, sim in zip(ids[q], sims[q], strict=True) if row >= 0 and row != excluded[q]
        ]
        if min_similarity is not None:
            found = [(row, sim) for row, sim in found if sim >= min_similarity]
        answers.append(
            [Match(name, rank + 1, row, embeddings.paths[row], sim) for rank, (row, sim) in enumerate(found[:top])]
        )
    return answers


def query_matrix(queries: np.ndarray, dim: int, top: int) -> np.ndarray:
    """The query vectors as one float32 row each, checked against the embeddings' length and ``--top``."""
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != dim:
        raise UsageError(
            f"queries have {queries.shape[1]} dimensions but the embeddings have {dim}; embed them with the same model"
        )
    return queries


def rows_of(embeddings: Embeddings, ids: Sequence[str]) -> list[int | None]:
    """Row of each id (a path as stored, an absolute path, or a unique file name); None when absent."""
    by_path = {path: row for row, path in enumerate(embeddings.paths)}
    by_name: dict[str, list[int]] = {}
    for row, path in enumerate(embeddings.paths):
        by_name.setdefault(Path(path).name, []).append(row)
    found: list[int | None] = []
    for item in ids:
        row = by_path.get(item)
        if row is None:
            row = by_path.get(str(Path(item).absolute()))
        if row is None and len(by_name.get(item, [])) == 1:
            row = by_name[item][0]
        found.append(row)
    return found
