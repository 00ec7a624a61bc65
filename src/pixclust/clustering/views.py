"""The views of an image the default pipeline clusters, and the features made from them.

A view is one vector per image from one model: the network's embedding, HOG
(gradient histograms) beside it, and for ink on paper the HOG of the picture's
outline (:mod:`pixclust.embedding.outline`). HOG and the outline are made in one
pass and stored together, the outline's half after HOG's
(:func:`handmade_views` parts them). :func:`join_normalized` says how a
candidate's features are made; :class:`JoinedViews` gives them as products,
the same at clustering time and for images placed later, so both see the same
numbers, and :func:`view_features` makes them whole where a caller needs them so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from pixclust.clustering.reduce import CHUNK_ROWS, check_features, l2_normalize
from pixclust.embedding.hog import HOG_DIM
from pixclust.errors import UsageError

EMBEDDING_VIEW = "embedding"
HOG_VIEW = "hog"
OUTLINE_VIEW = "outline"
# The hand-made views, in the order they are joined after the embedding. Each is centred on the
# clustered images' mean before it is made unit, since their raw vectors all point into the positive orthant.
HANDMADE_VIEWS = (HOG_VIEW, OUTLINE_VIEW)


def handmade_views(vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The hand-made views in a HOG model's vectors: HOG, and after it the outline's HOG where they hold one.

    Their width says which: ``hog`` and ``hog+ink`` make HOG_DIM numbers, the
    ``+outline`` models twice that. Stored vectors keep no model name, only its id,
    so the width is what every reader (a run's store, a sharded run's parts, a
    ``--hog`` file) has. Vectors of any other width are taken as HOG alone.
    """
    if vectors.shape[1] != 2 * HOG_DIM:
        return {HOG_VIEW: vectors}
    return {HOG_VIEW: vectors[:, :HOG_DIM], OUTLINE_VIEW: vectors[:, HOG_DIM:]}


def view_means(views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mean of each hand-made view present, which that view is centred on before joining."""
    return {name: views[name].mean(axis=0) for name in HANDMADE_VIEWS if name in views}


def handmade_length(count: int) -> np.float32:
    """The length each of ``count`` hand-made views is scaled to beside the unit embedding (see
    :func:`join_normalized`), so that together they weigh what the embedding does."""
    return np.float32(1 / np.sqrt(max(count, 1)))


def join_normalized(embedding: np.ndarray, handmade: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Unit embedding beside the hand-made views (vectors, mean), each centred and made unit, the whole row then
    made unit.

    The hand-made views together count as much as the embedding, whatever their
    number and width: each is scaled to length 1/sqrt(their number). With HOG and
    the outline each as long as the embedding, Fashion-MNIST's test set lost
    (ACC 0.775 / NMI 0.727 against 0.790 / 0.737 without the outline); with the
    two sharing the weight HOG had alone, it gained. Built in place in one
    float32 array because every intermediate of the plain expression would be
    another matrix of this size.
    """
    width = embedding.shape[1] + sum(vectors.shape[1] for vectors, _ in handmade)
    joined = np.empty((len(embedding), width), dtype=np.float32)
    left = joined[:, : embedding.shape[1]]
    left[...] = embedding
    l2_normalize(left, in_place=True)
    start = embedding.shape[1]
    for vectors, mean in handmade:
        part = joined[:, start : start + vectors.shape[1]]
        part[...] = vectors
        part -= mean
        l2_normalize(part, in_place=True)
        if len(handmade) > 1:
            part *= handmade_length(len(handmade))
        start += vectors.shape[1]
    return l2_normalize(joined, in_place=True)


def _check_views(views: Mapping[str, np.ndarray], names: tuple[str, ...], means: Mapping[str, np.ndarray]) -> None:
    missing = [name for name in names if name not in views]
    if missing:
        raise UsageError(
            f"these features need the {' and '.join(missing)} view of every image; "
            f"pass a mapping with {', '.join(repr(name) for name in names)}"
        )
    embedding = views[EMBEDDING_VIEW]
    handmade = [name for name in names if name != EMBEDDING_VIEW]
    unknown = [name for name in handmade if name not in means]
    if unknown:
        raise UsageError(f"joining {' and '.join(unknown)} needs the mean of the clustered images' vectors")
    for name in handmade:
        if len(views[name]) != len(embedding):
            raise UsageError(f"{len(views[name])} {name} vectors cannot pair with {len(embedding)} embeddings")
        if views[name].shape[1:] != means[name].shape:
            raise UsageError(
                f"{name} vectors of {views[name].shape[1]} numbers, where the clustering's have {len(means[name])}; "
                "make them with the run's HOG model and part them with pixclust.clustering.views.handmade_views"
            )


def view_features(
    views: Mapping[str, np.ndarray], names: tuple[str, ...], means: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The features of the candidate made of ``names`` (the embedding, alone or with hand-made views), a new array.

    ``means`` holds the mean of each hand-made view named (:func:`view_means` of the clustered images).
    """
    _check_views(views, names, means)
    embedding = views[EMBEDDING_VIEW]
    if names == (EMBEDDING_VIEW,):
        return l2_normalize(embedding)
    handmade = [name for name in names if name != EMBEDDING_VIEW]
    return join_normalized(embedding, [(views[name], means[name]) for name in handmade])


class JoinedViews:
    """The matrix :func:`view_features` makes, as products with thin matrices, never made whole.

    Each part of a joined row is a view's vector, less its centre (the hand-made
    views'), times a number of that row's own: :func:`join_normalized`'s
    lengths folded into one scale a part. So the matrix times a thin one is a
    sum of the stored views' own products and needs no copy of them: 70,000
    images' embedding, HOG and outline joined are 1.35 GB, which the clustering
    stage held beside the views it was made from (docs/PERFORMANCE.md).
    ``dense()`` makes it whole the way :func:`view_features` does, for the
    shapes small enough to take that way.
    """

    def __init__(
        self, views: Mapping[str, np.ndarray], names: tuple[str, ...], means: Mapping[str, np.ndarray]
    ) -> None:
        _check_views(views, names, means)
        self.views, self.names, self.means = views, names, means
        handmade = [name for name in names if name != EMBEDDING_VIEW]
        weight = handmade_length(len(handmade))
        self.parts: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = []
        squared_lengths = np.zeros(len(views[EMBEDDING_VIEW]), dtype=np.float32)
        for name in (EMBEDDING_VIEW, *handmade):
            vectors = check_features(views[name])
            centre = means[name].astype(np.float32) if name != EMBEDDING_VIEW else None
            lengths = _row_lengths(vectors, centre)
            scale = np.zeros_like(lengths)
            np.divide(weight if centre is not None else np.float32(1), lengths, out=scale, where=lengths > 0)
            squared_lengths += np.square(scale * lengths)
            self.parts.append((vectors, centre, scale))
        row_lengths = np.sqrt(squared_lengths)
        for _, _, scale in self.parts:
            np.divide(scale, row_lengths, out=scale, where=row_lengths > 0)
        self.shape = (len(squared_lengths), sum(vectors.shape[1] for vectors, _, _ in self.parts))
        self.unit_rows = int(np.count_nonzero(row_lengths))

    def dense(self) -> np.ndarray:
        return view_features(self.views, self.names, self.means)

    def _columns(self) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None, np.ndarray]]:
        start = 0
        for vectors, centre, scale in self.parts:
            yield slice(start, start + vectors.shape[1]), vectors, centre, scale
            start += vectors.shape[1]

    def times(self, thin: np.ndarray) -> np.ndarray:
        """The matrix @ ``thin`` (D x m), float32."""
        thin = np.asarray(thin, dtype=np.float32)
        out = np.zeros((self.shape[0], thin.shape[1]), dtype=np.float32)
        for columns, vectors, centre, scale in self._columns():
            product = vectors @ thin[columns]
            if centre is not None:
                product -= centre @ thin[columns]
            product *= scale[:, None]
            out += product
        return out

    def transposed_times(self, thin: np.ndarray) -> np.ndarray:
        """The matrix's transpose @ ``thin`` (N x m), float32."""
        thin = np.asarray(thin, dtype=np.float32)
        out = np.empty((self.shape[1], thin.shape[1]), dtype=np.float32)
        for columns, vectors, centre, scale in self._columns():
            scaled = thin * scale[:, None]
            out[columns] = vectors.T @ scaled
            if centre is not None:
                out[columns] -= np.outer(centre, scaled.sum(axis=0))
        return out

    def column_means(self) -> np.ndarray:
        means = np.empty(self.shape[1], dtype=np.float64)
        for columns, vectors, centre, scale in self._columns():
            # In the views' own float32: a float64 copy of the HOG view alone is 0.99 GB at 70,000 images.
            means[columns] = scale @ vectors / self.shape[0]
            if centre is not None:
                means[columns] -= scale.sum(dtype=np.float64) / self.shape[0] * centre
        return means


def _row_lengths(vectors: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Each row's length, less ``centre`` where given, computed a block of rows at a time."""
    lengths = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), CHUNK_ROWS):
        rows = vectors[start : start + CHUNK_ROWS].astype(np.float32)
        if centre is not None:
            rows -= centre
        lengths[start : start + CHUNK_ROWS] = np.linalg.norm(rows, axis=1)
    return lengths
