"""Dimensionality reduction of image embeddings before clustering.

Every method starts the same way: rows are L2-normalised (embedding similarity
is about direction, not length) and PCA keeps 50 components unless told otherwise, the usual
denoising step that also makes the non-linear methods affordable on 2048-d
features.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np

from pixclust.errors import UsageError

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

REDUCE_METHODS = ("pca", "umap", "lle", "spectral", "none")
DEFAULT_REDUCE = "pca"

PCA_DEFAULT_COMPONENTS = 50
EMBEDDING_DEFAULT_COMPONENTS = 10
UMAP_MAX_NEIGHBORS = 15
LLE_MAX_NEIGHBORS = 10
# Rows per step of whole-matrix passes (finiteness, norms): NumPy makes a temporary as large as
# its input first, which for 70,000 x 3,044 floats is another 0.85 GB (0.21 GB as booleans).
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Reduction:
    """The result of :func:`reduce_features`.

    ``coords`` is the N x m float32 space clustering runs in; ``method`` is the
    method that produced it (``"pca"`` when the requested non-linear method
    needs more images than there are); ``pca_explained_variance_ratio`` belongs
    to the PCA step that always runs, one entry per PCA component kept, and
    ``pca_mean`` and ``pca_components`` (m x D) are that step's fitted PCA, so
    new rows can be placed in a ``"pca"`` space (L2, subtract the mean, project).
    """

    coords: np.ndarray
    method: str
    pca_explained_variance_ratio: np.ndarray
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None


def check_features(X: np.ndarray) -> np.ndarray:
    """Return ``X`` as a float array after checking it is a finite, non-empty N x D matrix."""
    features = np.asarray(X)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise UsageError(
            f"features of shape {features.shape} cannot be used; expected a non-empty 2-D array (one row per image)"
        )
    if not np.issubdtype(features.dtype, np.number) or np.issubdtype(features.dtype, np.complexfloating):
        raise UsageError(f"features of dtype {features.dtype} cannot be used; expected real numbers")
    if not all(np.isfinite(features[rows]).all() for rows in _row_slices(len(features))):
        raise UsageError("features contain NaN or infinite values; expected finite numbers only")
    return features


def _row_slices(n_rows: int) -> Iterator[slice]:
    return (slice(start, start + CHUNK_ROWS) for start in range(0, n_rows, CHUNK_ROWS))


def is_whole_number(value: object) -> bool:
    """True for ints (NumPy ones included) but not for bools, which Python counts as ints."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def l2_normalize(X: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Scale each row to unit Euclidean length, as float32; all-zero rows stay zero.

    ``in_place=True`` overwrites ``X`` (when it is float32 already; a view such
    as a block of columns is fine) instead of making a copy.
    """
    features = np.asarray(X, dtype=np.float32)
    norms = np.empty((len(features), 1), dtype=np.float32)
    for rows in _row_slices(len(features)):
        norms[rows] = np.linalg.norm(features[rows], axis=1, keepdims=True)
    out = features if in_place else np.zeros_like(features)
    return np.divide(features, norms, out=out, where=norms > 0)


def _fit_pca(
    normalized: np.ndarray, n_components: int, random_state: int, *, overwrite: bool
) -> tuple[np.ndarray, np.ndarray, PCA]:
    """PCA coordinates (float32), explained-variance ratios and the fitted PCA of already normalised rows.

    ``overwrite=True`` lets PCA centre (and then square) ``normalized`` in
    place rather than work on a copy of it.
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, copy=not overwrite, random_state=random_state)
    # Data without any variance (a single image, identical images) makes the
    # ratio 0/0; such data explains nothing, so record zeros instead of NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        coords = pca.fit_transform(normalized)
        ratio = np.nan_to_num(pca.explained_variance_ratio_, nan=0.0)
    return coords.astype(np.float32), ratio, pca


def _check_method(method: str) -> None:
    if method not in REDUCE_METHODS:
        raise UsageError(f"--reduce {method!r} is not known; choose one of {', '.join(REDUCE_METHODS)}")


def _check_n_components(n_components: int | None) -> None:
    if n_components is None:
        return
    if not is_whole_number(n_components) or n_components < 1:
        raise UsageError(f"--n-components {n_components!r} is not allowed; use a whole number >= 1")


def _embed(pca_coords: np.ndarray, method: str, n_components: int, random_state: int) -> np.ndarray:
    """Run one of the non-linear embeddings on the PCA coordinates."""
    n_samples = pca_coords.shape[0]
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise UsageError(
                "--reduce umap needs umap-learn, which is not installed; run: pip install umap-learn"
            ) from error
        embedder = umap.UMAP(
            n_components=n_components,
            n_neighbors=min(UMAP_MAX_NEIGHBORS, n_samples - 1),
            # Tight clumps help clustering; this map is not meant for display.
            min_dist=0.0,
            metric="euclidean",
            random_state=random_state,
        )
        with warnings.catch_warnings():
            # A fixed random_state is what we want; UMAP warns that it costs parallelism.
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            coords = embedder.fit_transform(pca_coords)
    elif method == "lle":
        from sklearn.manifold import LocallyLinearEmbedding

        embedder = LocallyLinearEmbedding(
            n_components=n_components,
            n_neighbors=min(LLE_MAX_NEIGHBORS, n_samples - 1),
            random_state=random_state,
        )
        coords = _unit_rms(embedder.fit_transform(pca_coords))
    else:
        from sklearn.manifold import SpectralEmbedding

        embedder = SpectralEmbedding(n_components=n_components, random_state=random_state)
        coords = _unit_rms(embedder.fit_transform(pca_coords))
    return np.asarray(coords, dtype=np.float32)


def _unit_rms(coords: np.ndarray) -> np.ndarray:
    """Scale eigenvector coordinates to a root-mean-square of 1.

    LLE and spectral embeddings come out as normalised eigenvectors whose
    entries shrink like 1/sqrt(N) (about 0.002 for 2,000 images); at that
    scale a fixed regulariser such as the Gaussian mixture's reg_covar
    swamps the clusters and every image lands in one component.
    """
    rms = np.sqrt(np.mean(np.square(coords)))
    return coords / rms if rms > 0 else coords


def _max_embedding_components(method: str, n_samples: int) -> int:
    """The most components a non-linear method can return for ``n_samples`` points.

    LLE solves an N x N eigenproblem and drops its trivial eigenvector; the
    spectral embedding (and UMAP, whose layout starts from one) asks the sparse
    eigensolver for one vector more, which must stay below N.
    """
    if method == "lle":
        return n_samples - 1
    return n_samples - 2


def reduce_features(
    X: np.ndarray,
    method: str = DEFAULT_REDUCE,
    *,
    n_components: int | None = None,
    random_state: int = 0,
    overwrite: bool = False,
) -> Reduction:
    """Map N x D features into the space clustering runs in.

    ``"pca"`` keeps ``n_components`` components (default 50);
    ``"umap"``, ``"lle"`` and ``"spectral"`` embed the PCA coordinates into
    ``n_components`` (default 10) dimensions; ``"none"`` returns the
    L2-normalised features and ignores ``n_components``. Components are clamped to what the number of
    images allows; a non-linear method that cannot run at all on so few
    images (fewer than 2 for LLE, 3 for the others) falls back to the PCA
    coordinates and says so in ``Reduction.method``. ``overwrite=True`` lets it
    normalise and centre a float32 ``X`` in place, for a matrix the caller is
    done with: no copy of it is made then.
    """
    _check_method(method)
    _check_n_components(n_components)
    features = check_features(X)
    normalized = l2_normalize(features, in_place=overwrite)
    n_samples, n_features = normalized.shape

    kept = n_components if method == "pca" and n_components is not None else PCA_DEFAULT_COMPONENTS
    pca_components = min(kept, n_samples, n_features)
    # "none" returns the normalised rows, so only then must PCA leave them as they are.
    pca_coords, variance_ratio, pca = _fit_pca(normalized, pca_components, random_state, overwrite=method != "none")
    as_pca = Reduction(
        pca_coords,
        "pca",
        variance_ratio,
        pca_mean=pca.mean_.astype(np.float32),
        pca_components=pca.components_.astype(np.float32),
    )
    if method == "pca":
        return as_pca
    if method == "none":
        return Reduction(normalized, "none", variance_ratio)

    max_components = _max_embedding_components(method, n_samples)
    if max_components < 1:
        return as_pca
    embedding_components = min(n_components or EMBEDDING_DEFAULT_COMPONENTS, max_components)
    coords = _embed(pca_coords, method, embedding_components, random_state)
    return Reduction(coords, method, variance_ratio)


def project_2d(X: np.ndarray, *, random_state: int = 0) -> np.ndarray:
    """N x 2 float32 PCA map of the L2-normalised features, zero-padded when fewer than 2 components exist."""
    normalized = l2_normalize(check_features(X))
    n_samples, n_features = normalized.shape
    coords, _, _ = _fit_pca(normalized, min(2, n_samples, n_features), random_state, overwrite=True)
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
