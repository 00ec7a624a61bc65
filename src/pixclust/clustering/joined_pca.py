"""PCA of the joined views without making them whole.

The default pipeline reduces the embedding joined with HOG and, for ink on
paper, the outline. At 70,000 Fashion-MNIST images that matrix is 70,000 x
4,808 floats, 1.35 GB, and it was made beside the views it came from: the
clustering stage's peak (3.53 GB, docs/PERFORMANCE.md). A randomized PCA
needs the matrix only through products with thin ones, which
:class:`~pixclust.clustering.views.JoinedViews` gives from the stored views.

It is scikit-learn's PCA, step for step: the solver that ``svd_solver="auto"``
picks for the shape, and where that is the randomized one (every large
matrix pixclust reduces), the randomized range finder of Halko et al. as
``sklearn.utils.extmath`` runs it (the same Gaussian draws from the same seed,
as many power iterations, LU between them, QR at the end), then the same sign
convention. The coordinates agree with ``reduce_features(view_features(...),
"pca")`` to float32 rounding, and a test holds them to it. scikit-learn's
public ``randomized_svd`` validates its input as an array and will not take an
operator, which is why its steps are written out here rather than called.
Shapes where scikit-learn solves exactly are small enough to make whole and
hand to it.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from pixclust.clustering.reduce import Reduction, reduce_features
from pixclust.clustering.views import JoinedViews

# As scikit-learn's PCA and randomized_svd: columns drawn beyond the components kept, the share of the
# smaller side under which the randomized solver is used, and under which 7 power iterations run, not 4.
OVERSAMPLES = 10
RANDOMIZED_SHARE = 0.8
MANY_ITERATIONS_SHARE = 0.1


def uses_randomized_solver(n_rows: int, n_features: int, n_components: int) -> bool:
    """Whether scikit-learn's PCA with ``svd_solver="auto"`` solves this shape by randomized SVD."""
    if n_features <= 1_000 and n_rows >= 10 * n_features:
        return False
    if max(n_rows, n_features) <= 500:
        return False
    return 1 <= n_components < RANDOMIZED_SHARE * min(n_rows, n_features)


class _Centred:
    """The joined rows less their column means, as a scipy LinearOperator."""

    def __init__(self, joined: JoinedViews) -> None:
        self.joined = joined
        self.mean = joined.column_means().astype(np.float32)

    def times(self, thin: np.ndarray) -> np.ndarray:
        thin = np.asarray(thin, dtype=np.float32)
        out = self.joined.times(thin)
        out -= self.mean @ thin
        return out

    def transposed_times(self, thin: np.ndarray) -> np.ndarray:
        thin = np.asarray(thin, dtype=np.float32)
        out = self.joined.transposed_times(thin)
        out -= np.outer(self.mean, thin.sum(axis=0))
        return out

    def operator(self):  # type: ignore[no-untyped-def]
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(
            self.joined.shape,
            matvec=lambda vector: self.times(vector.reshape(-1, 1)).ravel(),
            rmatvec=lambda vector: self.transposed_times(vector.reshape(-1, 1)).ravel(),
            matmat=self.times,
            rmatmat=self.transposed_times,
            dtype=np.float32,
        )


def _randomized_svd(matrix, n_components: int, random_state: int):  # type: ignore[no-untyped-def]
    """U, S, Vt of ``matrix`` (a LinearOperator), as ``randomized_svd(..., flip_sign=False)`` gives them."""
    from scipy import linalg

    n_iterations = 7 if n_components < MANY_ITERATIONS_SHARE * min(matrix.shape) else 4
    # Worked on as its transpose where it is wider than tall, so that the thin matrices are the smaller.
    transpose = matrix.shape[0] < matrix.shape[1]
    operand = matrix.T if transpose else matrix
    size = (operand.shape[1], n_components + OVERSAMPLES)
    thin = np.random.RandomState(random_state).normal(size=size).astype(np.float32)
    lu = partial(linalg.lu, permute_l=True, check_finite=False)
    for _ in range(n_iterations):
        thin, _ = lu(operand @ thin)
        thin, _ = lu(operand.T @ thin)
    basis, _ = linalg.qr(operand @ thin, mode="economic", check_finite=False)
    u_small, singular, vt = linalg.svd((operand.T @ basis).T, full_matrices=False, lapack_driver="gesdd")
    u = basis @ u_small
    if transpose:
        return vt[:n_components].T, singular[:n_components], u[:, :n_components].T
    return u[:, :n_components], singular[:n_components], vt[:n_components]


def joined_pca(joined: JoinedViews, n_components: int, *, random_state: int = 0) -> Reduction:
    """``reduce_features(joined.dense(), "pca", n_components=...)``, the joined matrix never made whole where
    scikit-learn would solve it by randomized SVD."""
    from sklearn.utils.extmath import svd_flip

    n_rows, n_features = joined.shape
    kept = min(n_components, n_rows, n_features)
    if not uses_randomized_solver(n_rows, n_features, kept):
        return reduce_features(joined.dense(), "pca", n_components=kept, random_state=random_state, overwrite=True)
    centred = _Centred(joined)
    u, singular, vt = _randomized_svd(centred.operator(), kept, random_state)
    u, vt = svd_flip(u, vt, u_based_decision=False)
    coords = (u * singular).astype(np.float32)
    # The rows are unit (or zero), so their squared lengths less the mean's make the total variance.
    total_variance = (joined.unit_rows - n_rows * float(centred.mean.astype(np.float64) @ centred.mean)) / max(
        n_rows - 1, 1
    )
    explained = singular.astype(np.float64) ** 2 / max(n_rows - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nan_to_num(explained / total_variance, nan=0.0)
    return Reduction(coords, "pca", ratio, pca_mean=centred.mean, pca_components=vt.astype(np.float32))
