"""Look-alikes among embeddings no process holds whole: every part searched by a Ray task, the answers merged.

The search is exact: each task compares the queries with every vector of its
part (one matrix product) and hands back its best ``top + 1`` per query with
their paths, so the driver holds a few rows per part and query, never the
vectors. The merged answer is the ``top`` of all parts', which is what
``pixclust similar`` finds on the same vectors (its faiss index is exact below
50,000 rows; above, an IVF index can miss a neighbour that this search finds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from pixclust.curation.search import query_matrix
from pixclust.distributed.parts import PATH_COLUMN, Part, VectorParts, part_vectors, read_part
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S
from pixclust.embeddings import VECTOR_COLUMN


@dataclass(frozen=True)
class PartMatches:
    """A part's best rows for each query: cosines and input rows (queries x found), and the rows' paths as stored."""

    similarities: np.ndarray
    rows: np.ndarray
    paths: list[list[str]]


def part_matches(part: Part, dim: int, queries: np.ndarray, found: int) -> PartMatches:
    """The ``found`` rows of ``part`` most like each unit-length query (run in a Ray task)."""
    table = read_part(part, columns=(PATH_COLUMN, VECTOR_COLUMN))
    vectors = part_vectors(table, dim, file=part.file)
    lengths = np.linalg.norm(vectors, axis=1)
    lengths[lengths == 0] = 1.0
    similarities = (queries @ vectors.T) / lengths
    found = min(found, len(vectors))
    best = np.argpartition(-similarities, found - 1, axis=1)[:, :found]
    paths = table.column(PATH_COLUMN).to_pylist()
    return PartMatches(
        np.take_along_axis(similarities, best, axis=1),
        best + part.offset,
        [[paths[row] for row in query_best] for query_best in best.tolist()],
    )


def search_parts(
    data: VectorParts,
    queries: np.ndarray,
    *,
    top: int,
    exclude_paths: Sequence[str | None],
    ray: ModuleType,
    wait_s: float = DEFAULT_RAY_WAIT_S,
) -> list[list[tuple[int, str, float]]]:
    """Each query's ``top`` look-alikes as (input row, stored path, cosine), best first, over every part.

    ``exclude_paths[q]`` is query ``q``'s own path as stored, when the query is an image of the input: it is
    left out of its own answer.
    """
    from pixclust.embedding.engines.ray import run_tasks

    queries = query_matrix(queries, data.dim, top)
    unit = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    shared = ray.put(unit)
    task = ray.remote(num_cpus=1)(part_matches)
    calls = [(lambda part=part: task.remote(part, data.dim, shared, top + 1)) for part in data.parts]
    candidates: list[list[tuple[int, str, float]]] = [[] for _ in range(len(unit))]
    for _, matches in run_tasks(ray, calls, wait_s):
        for query, found in enumerate(candidates):
            found.extend(
                (int(row), path, float(similarity))
                for row, path, similarity in zip(
                    matches.rows[query], matches.paths[query], matches.similarities[query], strict=True
                )
                if path != exclude_paths[query]
            )
            # Only the best top of what has come back can still be in the answer.
            found.sort(key=lambda match: (-match[2], match[0]))
            del found[top:]
    return candidates
