"""The views of an image the default pipeline clusters, and the features made from them.

A view is one vector per image from one model: the network's embedding, and
HOG (gradient histograms) beside it. The same function makes a candidate's
features at clustering time and for images placed later, so both see the
same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pixclust.clustering.reduce import l2_normalize
from pixclust.errors import UsageError

EMBEDDING_VIEW = "embedding"
HOG_VIEW = "hog"


def join_normalized(embedding: np.ndarray, hog: np.ndarray, hog_mean: np.ndarray) -> np.ndarray:
    """Unit embedding beside unit centred HOG, the whole row then made unit: built in place in one float32 array.

    HOG is centred on ``hog_mean`` (the clustered images' mean) since its raw
    vectors all point into the positive orthant. In place because every
    intermediate of the plain expression would be another matrix of this size.
    """
    joined = np.empty((len(embedding), embedding.shape[1] + hog.shape[1]), dtype=np.float32)
    left, right = joined[:, : embedding.shape[1]], joined[:, embedding.shape[1] :]
    left[...] = embedding
    l2_normalize(left, in_place=True)
    right[...] = hog
    right -= hog_mean
    l2_normalize(right, in_place=True)
    return l2_normalize(joined, in_place=True)


def view_features(views: Mapping[str, np.ndarray], names: tuple[str, ...], hog_mean: np.ndarray | None) -> np.ndarray:
    """The features of the candidate made of ``names`` (the embedding, or the embedding and HOG), a new array."""
    missing = [name for name in names if name not in views]
    if missing:
        raise UsageError(
            f"these features need the {' and '.join(missing)} view of every image; "
            f"pass a mapping with {', '.join(repr(name) for name in names)}"
        )
    embedding = views[EMBEDDING_VIEW]
    if names == (EMBEDDING_VIEW,):
        return l2_normalize(embedding)
    if hog_mean is None:
        raise UsageError("joining HOG needs the mean HOG vector of the clustered images")
    hog = views[HOG_VIEW]
    if len(hog) != len(embedding):
        raise UsageError(f"{len(hog)} HOG vectors cannot pair with {len(embedding)} embeddings")
    return join_normalized(embedding, hog, hog_mean)
