"""2-D and 3-D maps of the embeddings for people to look at: PCA, t-SNE, UMAP.

These are for display, unlike ``reduce.py``'s spaces for clustering. Every
map starts from the same L2 + PCA-50 coordinates. t-SNE and UMAP are fitted
on at most ``fit_sample`` points and the rest are placed into the fitted map
(openTSNE's ``transform``, UMAP's ``transform``), so a 100,000-image map
costs minutes, not hours.

t-SNE runs fewer iterations than openTSNE's defaults, and its 3-D map (Barnes-Hut
only: openTSNE's FFT exists in 2-D alone) a coarser Barnes-Hut approximation; on
10,000 Fashion-MNIST images, in one run of ``bench/maps.py`` on a loaded machine,
the 2-D and 3-D t-SNE maps took 86 s and 83 s instead of 217 s and 180 s, with the
same share of each image's 10 nearest map neighbours in its own class (0.759 and
0.766; PCA's maps: 0.471 and 0.578).
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
# openTSNE's 500 iterations after early exaggeration polish more than a map on screen shows: on 10,000
# Fashion-MNIST images (one exploratory run, openTSNE called directly) 250 kept the share of 10 nearest map
# neighbours of the same class (2-D 0.759 -> 0.759, 3-D 0.767 -> 0.766 with the theta below) and took the
# 2-D map from 92 s to 50 s.
_TSNE_ITERATIONS = 250
# Barnes-Hut's opening angle in 3-D (openTSNE's default is 0.5): with 0.8 and the iterations above the 3-D map
# of those images took 61 s instead of 191 s (117 s with 0.5), same neighbour share; 1.0 gained no more time.
_TSNE_3D_THETA = 0.8


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
) -> np.ndarray:
    """N x ``n_components`` float32 map of the rows whose ``map_basis`` is ``basis`` (zero-padded when N is tiny)."""
    check_map_methods([method])
    if n_components not in (2, 3):
        raise UsageError(f"maps have 2 or 3 dimensions, not {n_components}")
    n = len(basis)
    if method == "pca" or n < 5:
        coords = basis[:, :n_components]
    else:
        rng = np.random.default_rng(random_state)
        fitted = np.sort(rng.choice(n, size=fit_sample, replace=False)) if n > fit_sample else np.arange(n)
        rest = np.setdiff1d(np.arange(n), fitted)
        fit = _fit_tsne if method == "tsne" else _fit_umap
        coords = np.empty((n, n_components), np.float32)
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


def _fit_tsne(points: np.ndarray, n_components: int, random_state: int) -> tuple[np.ndarray, Placer]:
    from openTSNE import TSNE

    perplexity = float(min(30, (len(points) - 1) / 3))
    three_d = n_components == 3
    tsne = TSNE(
        n_components=n_components,
        perplexity=perplexity,
        n_iter=_TSNE_ITERATIONS,
        # openTSNE's "auto" takes Barnes-Hut below 10,000 points and FFT above; FFT exists only in 2-D.
        negative_gradient_method="bh" if three_d else "auto",
        theta=_TSNE_3D_THETA if three_d else 0.5,
        n_jobs=-1,
        random_state=random_state,
        verbose=False,
    )
    embedding = tsne.fit(points)
    return np.asarray(embedding), lambda new: np.asarray(embedding.transform(new))


def _fit_umap(points: np.ndarray, n_components: int, random_state: int) -> tuple[np.ndarray, Placer]:
    import umap

    model = umap.UMAP(
        n_components=n_components, n_neighbors=min(15, len(points) - 1), min_dist=0.1, random_state=random_state
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        coords = model.fit_transform(points)
    return coords, model.transform
