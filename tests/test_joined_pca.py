"""The joined views as products (views.JoinedViews) and their PCA without the joined matrix (joined_pca)."""

from __future__ import annotations

import numpy as np
import pytest

from pixclust.clustering.adaptive import AdaptiveClusterer
from pixclust.clustering.joined_pca import joined_pca, uses_randomized_solver
from pixclust.clustering.reduce import reduce_features
from pixclust.clustering.views import JoinedViews, view_features, view_means
from pixclust.errors import UsageError

NAMES = {
    "embedding": ("embedding",),
    "embedding+hog": ("embedding", "hog"),
    "every view": ("embedding", "hog", "outline"),
}


def _views(n_rows: int, widths: tuple[int, int, int] = (40, 30, 30), *, seed: int = 0) -> dict[str, np.ndarray]:
    """Views with a few strong directions and noise, as image features have: all positive, like GeM and HOG."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_rows, 6))
    views = {}
    for name, width in zip(("embedding", "hog", "outline"), widths, strict=True):
        loadings = rng.normal(size=(6, width)) * np.linspace(3, 0.5, 6)[:, None]
        views[name] = np.abs(factors @ loadings + rng.normal(scale=0.5, size=(n_rows, width))).astype(np.float32)
    return views


@pytest.mark.parametrize("names", NAMES.values(), ids=NAMES.keys())
def test_products_equal_those_of_the_features_made_whole(names) -> None:
    views = _views(200)
    # A zero embedding and a HOG row at its view's mean: the lengths that cannot be divided by.
    views["embedding"][3] = 0
    means = view_means(views)
    views["hog"][5] = means["hog"]
    joined = JoinedViews(views, names, means)
    dense = view_features(views, names, means)
    assert joined.shape == dense.shape
    np.testing.assert_array_equal(joined.dense(), dense)
    thin = np.random.default_rng(1).normal(size=(dense.shape[1], 7)).astype(np.float32)
    tall = np.random.default_rng(2).normal(size=(len(dense), 7)).astype(np.float32)
    np.testing.assert_allclose(joined.times(thin), dense @ thin, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(joined.transposed_times(tall), dense.T @ tall, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(joined.column_means(), dense.mean(axis=0), rtol=1e-5, atol=1e-7)
    assert joined.unit_rows == np.count_nonzero(np.linalg.norm(dense, axis=1) > 0.5)


def test_joined_views_check_their_views_as_view_features_does() -> None:
    views = _views(20)
    with pytest.raises(UsageError, match="cannot pair"):
        JoinedViews({**views, "hog": views["hog"][:10]}, ("embedding", "hog"), view_means(views))
    with pytest.raises(UsageError, match="needs the mean"):
        JoinedViews(views, ("embedding", "hog"), {})
    views["hog"][2, 1] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        JoinedViews(views, ("embedding", "hog"), view_means(views))


@pytest.mark.parametrize(
    ("n_rows", "widths"),
    [((1500), (600, 300, 300)), ((600), (600, 300, 300)), ((120), (40, 30, 30)), ((3000), (200, 40, 40))],
    ids=["tall (randomized)", "wide (randomized, transposed)", "small (exact)", "tall and narrow (covariance)"],
)
def test_pca_is_scikit_learns_pca_of_the_features_made_whole(n_rows, widths) -> None:
    views = _views(n_rows, widths)
    means = view_means(views)
    for names in NAMES.values():
        joined = JoinedViews(views, names, means)
        expected = reduce_features(view_features(views, names, means), "pca", n_components=32, random_state=3)
        reduced = joined_pca(joined, 32, random_state=3)
        assert reduced.method == "pca"
        np.testing.assert_allclose(reduced.coords, expected.coords, atol=2e-4 * np.abs(expected.coords).max())
        np.testing.assert_allclose(reduced.pca_components, expected.pca_components, atol=2e-4)
        np.testing.assert_allclose(reduced.pca_mean, expected.pca_mean, atol=1e-6)
        np.testing.assert_allclose(
            reduced.pca_explained_variance_ratio, expected.pca_explained_variance_ratio, rtol=1e-4, atol=1e-7
        )


def test_the_shapes_that_take_the_randomized_solver_are_scikit_learns() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    for shape in ((1500, 1200), (600, 1200), (120, 100), (3000, 280), (700, 40), (501, 200)):
        pca = PCA(n_components=32).fit(rng.normal(size=shape))
        assert (pca._fit_svd_solver == "randomized") == uses_randomized_solver(*shape, 32)


def test_the_pipeline_reduces_large_candidates_without_making_them_whole(monkeypatch) -> None:
    views = _views(1500, (600, 300, 300))

    def refuse(self):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{self.names} made whole")

    monkeypatch.setattr(JoinedViews, "dense", refuse)
    fitted = AdaptiveClusterer(k=4, random_state=0).fit(views)
    assert fitted.n_clusters_ == 4
    assert fitted.refined_on_ is not None
