"""2-D and 3-D maps of the embeddings for people to look at: PCA, t-SNE, UMAP.

These are for display, unlike ``reduce.py``'s spaces for clustering. Every
map starts from the same L2 + PCA-50 coordinates. t-SNE and UMAP are fitted
on at most ``fit_sample`` points and the rest are placed into the fitted map
(openTSNE's ``transform``, UMAP's ``transform``; the 3-D t-SNE map's by their
nearest fitted images, below), so a 100,000-image map costs minutes, not hours.

t-SNE runs fewer iterations than openTSNE's defaults (``_TSNE_ITERATIONS``). Its 3-D map
is not fitted from nothing: it goes on from the 2-D map, with PCA's third axis as its depth,
for ``_TSNE_3D_ITERATIONS`` without early exaggeration, and images beyond the fit sample are
placed where their nearest fitted images are (``place_by_neighbours``) rather than by
openTSNE's 3-D ``transform`` (Barnes-Hut only: openTSNE's FFT exists in 2-D alone). In one
run of ``bench/maps.py`` the 3-D map of 10,000 Fashion-MNIST images took 6.3 s instead of
20.5 s, with the share of each image's 10 nearest map neighbours in its own class at 0.765
against 0.766, and of all 70,000 (10,000 fitted) 11.2 s instead of 70.5 s, 0.786 against 0.790.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from pixclust.clustering.reduce import reduce_features
from pixclust.errors import UsageError

MAP_METHODS = ("pca", "tsne", "umap")
DEFAULT_MAPS = ("pca", "tsne")
DEFAULT_FIT_SAMPLE = 10_000
# The basis is PCA of unit vectors: where no coordinate spreads further than this, the rows differ by rounding
# alone (twenty copies of one digit spread 1.4e-14).
_COPIES_SPREAD = 1e-6
# openTSNE's 500 iterations after early exaggeration polish more than a map on screen shows: on 10,000
# Fashion-MNIST images (one exploratory run, openTSNE called directly) 250 kept the share of 10 nearest map
# neighbours of the same class (2-D 0.759 -> 0.759, 3-D 0.767 -> 0.766 with the theta below) and took the
# 2-D map from 92 s to 50 s.
_TSNE_ITERATIONS = 250
# Barnes-Hut's opening angle in 3-D (openTSNE's default is 0.5). Fitted from nothing, a 3-D map of those images
# took 61 s with 0.8 instead of 117 s with 0.5, same neighbour share; going on from the 2-D map (below), 1.0 took
# 5.8 s against 6.0 s and lost 0.001 of the share.
_TSNE_3D_THETA = 0.8
# Iterations the 3-D map runs on from the 2-D one: on those images 150 gave the share of 100 (0.795).
_TSNE_3D_ITERATIONS = 100


def check_map_methods(methods: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    unknown = [m for m in methods if m not in MAP_METHODS]
    if unknown:
        raise UsageError(f"--map {unknown[0]!r} is not known; choose from {', '.join(MAP_METHODS)}")
    return tuple(dict.fromkeys(methods))


def map_basis(X: np.ndarray, *, random_state: int = 0) -> np.ndarray:
    """The L2 + PCA coordinates every map starts from; computed once for a report's several maps."""
    return reduce_features(X, "pca", random_state=random_state).coords


def map_coordinates(
    basis: np.ndarray,
    method: str,
    *,
    n_components: int = 2,
    random_state: int = 0,
    fit_sample: int = DEFAULT_FIT_SAMPLE,
    flat_map: np.ndarray | None = None,
) -> np.ndarray:
    """N x ``n_components`` float32 map of the rows whose ``map_basis`` is ``basis`` (zero-padded when N is tiny).

    A 3-D t-SNE map continues the 2-D t-SNE map of the same rows with the same ``random_state`` and
    ``fit_sample``: pass it as ``flat_map`` where it is at hand, or it is made first.
    """
    check_map_methods([method])
    if n_components not in (2, 3):
        raise UsageError(f"maps have 2 or 3 dimensions, not {n_components}")
    n = len(basis)
    # Where every image has the same vector (one picture copied), t-SNE's start has no spread to scale and
    # openTSNE gives NaN, or it spreads rounding errors over the map; the map is then PCA's: every image on
    # one spot.
    if method == "pca" or n < 5 or np.ptp(basis, axis=0).max() <= _COPIES_SPREAD:
        coords = basis[:, :n_components]
    else:
        rng = np.random.default_rng(random_state)
        fitted = np.sort(rng.choice(n, size=fit_sample, replace=False)) if n > fit_sample else np.arange(n)
        rest = np.setdiff1d(np.arange(n), fitted)
        coords = np.empty((n, n_components), np.float32)
        if method == "tsne" and n_components == 3:
            if flat_map is None:
                flat_map = map_coordinates(basis, "tsne", random_state=random_state, fit_sample=fit_sample)
            coords[fitted] = _tsne_in_depth(basis[fitted], flat_map[fitted], random_state)
            place = _neighbours_placer(basis[fitted], coords[fitted])
        else:
            fit = _fit_tsne if method == "tsne" else _fit_umap
            coords[fitted], place = fit(basis[fitted], n_components, random_state)
        if len(rest):
            coords[rest] = place(basis[rest])
    coords = np.asarray(coords, dtype=np.float32)
    return np.pad(coords, ((0, 0), (0, n_components - coords.shape[1])))


Placer = Callable[[np.ndarray], np.ndarray]
# Earlier images a new one's map position is drawn from ...
PLACING_NEIGHBOURS = 5
# ... each weighted by exp(cosine / this): a copy of an earlier image (cosine 0.99 against 0.9 for the next
# neighbour) lands on it, an image with several equally close neighbours between them.
PLACING_TEMPERATURE = 0.02


def place_by_neighbours(earlier: np.ndarray, new: np.ndarray) -> Placer:
    """A placer for any map of the ``earlier`` vectors: each ``new`` vector goes to the weighted mean position
    of its PLACING_NEIGHBOURS most cosine-similar earlier ones (found once, whichever maps are then placed)."""
    from pixclust.index import VectorIndex

    similarities, neighbours = VectorIndex(earlier).search(new, min(PLACING_NEIGHBOURS, len(earlier)))
    found = neighbours >= 0
    weights = np.where(found, np.exp((similarities - similarities[:, :1]) / PLACING_TEMPERATURE), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)

    def place(coords: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nkd->nd", weights, coords[np.where(found, neighbours, 0)]).astype(np.float32)

    return place


def _neighbours_placer(fitted_basis: np.ndarray, fitted_coords: np.ndarray) -> Placer:
    """Places new rows at their nearest fitted rows' positions in a map (``place_by_neighbours``)."""
    return lambda new: place_by_neighbours(fitted_basis, new)(fitted_coords)


def _fit_tsne(points: np.ndarray, n_components: int, random_state: int) -> tuple[np.ndarray, Placer]:
    """A 2-D t-SNE map of ``points`` and the placer of new points into it (openTSNE's ``transform``)."""
    from openTSNE import TSNE

    tsne = TSNE(
        n_components=n_components,
        perplexity=_perplexity(len(points)),
        n_iter=_TSNE_ITERATIONS,
        n_jobs=-1,
        random_state=random_state,
        verbose=False,
    )
    embedding = tsne.fit(points)
    return np.asarray(embedding), lambda new: np.asarray(embedding.transform(new))


def _tsne_in_depth(points: np.ndarray, flat: np.ndarray, random_state: int) -> np.ndarray:
    """A 3-D t-SNE map of ``points`` that goes on from their 2-D map ``flat``, PCA's third axis as its depth.

    The depth starts as spread out as the flat map's first axis, and the whole start is shrunk as openTSNE
    shrinks every start it is given (its ``rescale``): on the default network's embedding of the 10,000 images
    above, the share read 0.797 shrunk so and 0.791 kept at the 2-D map's size. Early exaggeration, which pulls
    clusters together from a random start, is not needed on a map whose clusters are already formed.
    """
    from openTSNE import TSNEEmbedding, affinity, initialization

    affinities = affinity.PerplexityBasedNN(
        points, perplexity=_perplexity(len(points)), n_jobs=-1, random_state=random_state, verbose=False
    )
    depth = points[:, 2] if points.shape[1] > 2 else np.zeros(len(points))
    spread = np.std(depth)
    depth = depth / spread * np.std(flat[:, 0]) if spread > 0 else depth
    start = initialization.rescale(np.column_stack([flat, depth]).astype(np.float64))
    embedding = TSNEEmbedding(
        start, affinities, negative_gradient_method="bh", theta=_TSNE_3D_THETA, n_jobs=-1, random_state=random_state
    )
    return np.asarray(embedding.optimize(n_iter=_TSNE_3D_ITERATIONS, exaggeration=1, momentum=0.8))


def _perplexity(n_points: int) -> float:
    """openTSNE's default perplexity, lowered where there are too few points for it."""
    return float(min(30, (n_points - 1) / 3))


def _fit_umap(points: np.ndarray, n_components: int, random_state: int) -> tuple[np.ndarray, Placer]:
    import umap

    model = umap.UMAP(
        n_components=n_components, n_neighbors=min(15, len(points) - 1), min_dist=0.1, random_state=random_state
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        coords = model.fit_transform(points)
    return coords, model.transform
