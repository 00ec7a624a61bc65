"""Look-alikes and duplicates over stored embeddings, with the shared :class:`~pixclust.index.VectorIndex`.

Duplicates are exact (same content hash, or the same vector when no hashes
are known) or near (cosine at least ``threshold``). Networks trained for
classification see shape more than colour (EfficientNet-Lite0 puts a red
and a green square at cosine 0.94, above a JPEG copy of a photo at 0.92) and
call different but alike items (two plain trousers) near-identical, so near
pairs whose image files can be read must also agree on a 16x16 colour
thumbnail. Groups are connected components of the accepted pairs; the
suggested keeper is the largest image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.embeddings import Embeddings
from pixclust.errors import DecodeError, UsageError
from pixclust.index import VectorIndex

DEFAULT_DUPLICATE_THRESHOLD = 0.90
DEFAULT_TOP = 10
DEFAULT_COLOUR_TOLERANCE = 0.03
_THUMB_SIDE = 16
_THUMB_DRAFT = 64


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
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != embeddings.dim:
        raise UsageError(
            f"queries have {queries.shape[1]} dimensions but the embeddings have {embeddings.dim}; embed them with the same model"
        )
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


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows that show the same picture; ``keeper`` is the one to keep (largest resolution, then largest file)."""

    rows: tuple[int, ...]
    keeper: int
    kind: str
    min_similarity: float


@dataclass
class DuplicateReport:
    """Duplicate groups, largest first, and what was checked.

    ``colour_checked`` counts near pairs compared by colour thumbnail;
    ``colour_unchecked`` those whose files could not be read (kept on the
    embedding alone); ``colour_rejected`` pairs that looked alike but differ in colour.
    """

    groups: list[DuplicateGroup]
    threshold: float
    n_images: int
    colour_checked: int
    colour_unchecked: int
    colour_rejected: int

    @property
    def n_redundant(self) -> int:
        """Images that could be dropped if each group kept only its keeper."""
        return sum(len(group.rows) - 1 for group in self.groups)


def find_duplicates(
    embeddings: Embeddings,
    *,
    threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
    colour_tolerance: float | None = DEFAULT_COLOUR_TOLERANCE,
    index: VectorIndex | None = None,
) -> DuplicateReport:
    """Exact and near-duplicate groups; ``colour_tolerance=None`` trusts the embedding alone."""
    if not 0.0 < threshold <= 1.0:
        raise UsageError(
            f"--threshold {threshold} must be in (0, 1]; cosine 0.90-0.97 finds resized and re-encoded copies"
        )
    n = len(embeddings)
    content = np.arange(n)
    joined = _UnionFind(n)
    for rows in _equal_content(embeddings):
        content[rows] = rows[0]
        for row in rows[1:]:
            joined.union(rows[0], row)
    min_sim = np.ones(n, np.float64)
    checked = unchecked = rejected = 0
    thumbs: dict[int, np.ndarray | None] = {}
    index = index or VectorIndex(embeddings.vectors)
    for left, right, sims in index.pairs_above(threshold):
        for i, j, sim in zip(left.tolist(), right.tolist(), sims.tolist(), strict=True):
            if content[i] == content[j]:
                continue
            if colour_tolerance is not None:
                a, b = (_thumbnail(embeddings.paths[r], thumbs, r) for r in (i, j))
                if a is None or b is None:
                    unchecked += 1
                else:
                    checked += 1
                    if colour_distance(a, b) > colour_tolerance:
                        rejected += 1
                        continue
            joined.union(i, j)
            min_sim[i] = min(min_sim[i], sim)
            min_sim[j] = min(min_sim[j], sim)
    groups = []
    for rows in joined.groups():
        is_near = len(set(content[rows].tolist())) > 1
        groups.append(
            DuplicateGroup(
                rows=tuple(rows),
                keeper=_keeper(embeddings, rows),
                kind="near" if is_near else "exact",
                min_similarity=float(min_sim[rows].min()),
            )
        )
    groups.sort(key=lambda group: (-len(group.rows), group.rows[0]))
    return DuplicateReport(groups, float(threshold), n, checked, unchecked, rejected)


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean RGB distance between two colour thumbnails, 0 (same) to sqrt(3) (black vs white everywhere).

    A resized or re-encoded copy stays under about 0.02; a recoloured one is
    above 0.2 (a red square against a blue one: 0.36); of 1,791 Fashion-MNIST
    pairs of different items at cosine >= 0.90, 2 are under 0.03.
    """
    return float(np.linalg.norm(a - b, axis=-1).mean())


def colour_thumbnail(path: str) -> np.ndarray:
    """The image as a 16x16 RGB thumbnail in [0, 1] (box-averaged, so size and JPEG noise barely change it)."""
    from PIL import Image

    from pixclust.embedding.decode import load_rgb

    image = load_rgb(path, draft_size=_THUMB_DRAFT)
    return np.asarray(image.resize((_THUMB_SIDE, _THUMB_SIDE), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _thumbnail(path: str, cache: dict[int, np.ndarray | None], row: int) -> np.ndarray | None:
    if row not in cache:
        try:
            cache[row] = colour_thumbnail(path)
        except DecodeError:
            cache[row] = None
    return cache[row]


def _equal_content(embeddings: Embeddings) -> list[list[int]]:
    """Rows with the same content hash; the same vector's bytes when hashes are unknown (precomputed input)."""
    groups: dict[object, list[int]] = {}
    for row, digest in enumerate(embeddings.content_hashes):
        key: object = digest or embeddings.vectors[row].tobytes()
        groups.setdefault(key, []).append(row)
    return [rows for rows in groups.values() if len(rows) > 1]


def _keeper(embeddings: Embeddings, rows: Sequence[int]) -> int:
    def size(row: int) -> tuple[int, int, int]:
        width, height = (int(v) for v in embeddings.image_sizes[row])
        return (width * height, int(embeddings.file_sizes[row]), -row)

    return max(rows, key=size)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def groups(self) -> list[list[int]]:
        """Sets of two or more joined items, each in ascending order."""
        members: dict[int, list[int]] = {}
        for item in range(len(self.parent)):
            members.setdefault(self.find(item), []).append(item)
        return [rows for rows in members.values() if len(rows) > 1]
