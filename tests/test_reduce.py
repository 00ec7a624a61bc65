from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pixclust.clustering import reduce
from pixclust.clustering.reduce import REDUCE_METHODS, l2_normalize, project_2d, reduce_features
from pixclust.errors import UsageError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_zero() -> None:
    X = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    normalized = l2_normalize(X)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])


def test_l2_normalize_in_chunks_and_in_place_gives_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    X = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    X[3] = 0
    expected = l2_normalize(X)
    monkeypatch.setattr(reduce, "CHUNK_ROWS", 3)
    np.testing.assert_array_equal(l2_normalize(X), expected)
    wide = np.hstack([X, np.ones((10, 2), np.float32)])
    block = wide[:, :6]
    assert l2_normalize(block, in_place=True) is block
    np.testing.assert_array_equal(wide[:, :6], expected)
    np.testing.assert_array_equal(wide[:, 6:], 1)


def test_reduce_features_with_overwrite_works_in_the_input_and_gives_the_same_space(digits: np.ndarray) -> None:
    X = digits.astype(np.float32)
    expected = reduce_features(X, "pca")
    np.testing.assert_array_equal(X, digits.astype(np.float32))
    scratch = X.copy()
    reduced = reduce_features(scratch, "pca", overwrite=True)
    np.testing.assert_array_equal(reduced.coords, expected.coords)
    np.testing.assert_array_equal(reduced.pca_explained_variance_ratio, expected.pca_explained_variance_ratio)
    # Used as working space rather than copied.
    assert not np.array_equal(scratch, X)


def test_pca_keeps_50_components_and_their_variance(digits: np.ndarray) -> None:
    reduction = reduce_features(digits, "pca")
    assert reduction.method == "pca"
    assert reduction.coords.shape == (len(digits), 50)
    assert reduction.coords.dtype == np.float32
    ratio = reduction.pca_explained_variance_ratio
    assert len(ratio) == 50
    assert np.all(np.diff(ratio) <= 0)
    # 50 of 64 pixel dimensions hold nearly all the variance of the digits.
    assert 0.95 < ratio.sum() <= 1.0


def test_pca_n_components_sets_the_components_kept_within_what_the_data_has(digits: np.ndarray) -> None:
    reduction = reduce_features(digits, "pca", n_components=5)
    assert reduction.coords.shape == (len(digits), 5)
    assert len(reduction.pca_explained_variance_ratio) == 5
    assert reduce_features(digits, "pca", n_components=60).coords.shape == (len(digits), 60)
    # The digits have 64 pixels: no more components than that.
    assert reduce_features(digits, "pca", n_components=128).coords.shape == (len(digits), 64)


def test_none_returns_the_normalised_features_and_still_records_pca(digits: np.ndarray) -> None:
    reduction = reduce_features(digits, "none")
    np.testing.assert_array_equal(reduction.coords, l2_normalize(digits))
    assert len(reduction.pca_explained_variance_ratio) == 50


@pytest.mark.parametrize("method", ["lle", "spectral"])
def test_eigenvector_embeddings_have_the_requested_size_and_unit_scale(digits: np.ndarray, method: str) -> None:
    reduction = reduce_features(digits[:400], method, n_components=4)
    assert reduction.method == method
    assert reduction.coords.shape == (400, 4)
    assert np.sqrt(np.mean(reduction.coords**2)) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("method", REDUCE_METHODS)
@pytest.mark.parametrize("n_samples", [1, 2, 3, 5])
def test_tiny_inputs_do_not_crash(digits: np.ndarray, method: str, n_samples: int) -> None:
    reduction = reduce_features(digits[:n_samples], method)
    assert reduction.coords.shape[0] == n_samples
    assert reduction.coords.shape[1] >= 1
    assert np.isfinite(reduction.coords).all()
    assert np.isfinite(reduction.pca_explained_variance_ratio).all()


def test_umap_clamps_components_to_what_few_images_allow(digits: np.ndarray) -> None:
    reduction = reduce_features(digits[:6], "umap", n_components=10)
    assert reduction.method == "umap"
    assert reduction.coords.shape == (6, 4)


def test_a_single_image_falls_back_to_pca(digits: np.ndarray) -> None:
    reduction = reduce_features(digits[:1], "spectral")
    assert reduction.method == "pca"
    assert reduction.coords.shape == (1, 1)


def test_missing_umap_is_a_usage_error_naming_the_package(digits: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(UsageError, match="pip install umap-learn"):
        reduce_features(digits[:20], "umap")


@pytest.mark.parametrize(
    ("X", "method", "n_components", "message"),
    [
        (np.ones((4, 3)), "tsne", None, "--reduce 'tsne' is not known"),
        (np.ones((4, 3)), "pca", 0, "--n-components 0 "),
        (np.ones(4), "pca", None, r"shape \(4,\)"),
        (np.array([[1.0, np.nan]]), "pca", None, "NaN"),
    ],
)
def test_bad_parameters_are_usage_errors(X: np.ndarray, method: str, n_components: int | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        reduce_features(X, method, n_components=n_components)


def test_project_2d_maps_every_image_to_two_coordinates(digits: np.ndarray) -> None:
    coords = project_2d(digits)
    assert coords.shape == (len(digits), 2)
    np.testing.assert_allclose(coords, reduce_features(digits, "pca", n_components=2).coords, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 5), (4, 1)])
def test_project_2d_pads_when_fewer_than_two_components_exist(shape: tuple[int, int]) -> None:
    coords = project_2d(np.arange(1, 1 + shape[0] * shape[1], dtype=float).reshape(shape))
    assert coords.shape == (shape[0], 2)
    np.testing.assert_array_equal(coords[:, 1], 0.0)
