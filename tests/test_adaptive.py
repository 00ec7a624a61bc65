"""The adaptive pipeline's parts: kNN-graph modularity, the k rule, stability, the choice of features, refinement."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import hog
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from pixclust.clustering import refine
from pixclust.clustering.adaptive import (
    VIEW_AGREEMENT,
    AdaptiveClusterer,
    candidate_representations,
    rival_starts,
    view_agreement,
)
from pixclust.clustering.k_selection import choose_k_by_modularity, graph_modularity
from pixclust.clustering.metrics import cluster_accuracy, clustering_scores
from pixclust.clustering.placement import ClusterModel
from pixclust.clustering.reduce import l2_normalize, reduce_features
from pixclust.clustering.refine import nearest_neighbours, refine_best, refine_clusters
from pixclust.clustering.stability import choose_representation, clustering_stability
from pixclust.clustering.views import join_normalized
from pixclust.embedding.outline import outline_mask
from pixclust.errors import UsageError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits: raw pixels (N x 64), HOG of each 8x8 image upscaled to 32x32, and the labels."""
    data = load_digits()
    big = np.kron(data.images, np.ones((4, 4)))
    hogs = np.array([hog(image, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for image in big])
    return data.data.astype(np.float32), hogs.astype(np.float32), data.target


@pytest.fixture(scope="module")
def digit_outlines() -> np.ndarray:
    """HOG, as the digits fixture takes it, of each digit's outline (its ink drawn dark on white, holes filled)."""
    big = np.kron(load_digits().images, np.ones((4, 4)))
    on_paper = np.repeat((255 - big * 255 / 16).astype(np.uint8)[..., None], 3, axis=3)
    outlines = [
        hog(outline_mask(picture), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
        for picture in on_paper
    ]
    return np.array(outlines, dtype=np.float32)


def test_modularity_of_two_separate_cliques_is_one_half_for_the_right_split() -> None:
    # Two 4-cliques with no edge between them: each row's 3 neighbours are the rest of its clique.
    neighbours = np.array(
        [[j for j in range(4) if j != i] for i in range(4)] + [[j for j in range(4, 8) if j != i] for i in range(4, 8)]
    )
    right = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert graph_modularity(neighbours, right) == pytest.approx(0.5)
    assert graph_modularity(neighbours, np.array([0, 1, 0, 1, 0, 1, 0, 1])) < 0
    assert graph_modularity(neighbours, np.zeros(8, dtype=int)) == pytest.approx(0.0)


def test_k_rule_prefers_the_smallest_k_close_to_the_best() -> None:
    ks = np.arange(2, 8)
    assert choose_k_by_modularity(ks, np.array([0.3, 0.5, 0.795, 0.80, 0.79, 0.7])) == 4
    assert choose_k_by_modularity(ks, np.array([0.3, 0.5, 0.6, 0.80, 0.79, 0.7])) == 5


def test_stability_is_high_for_separate_blobs_and_low_for_noise() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(4, 5))
    blobs = np.concatenate([centre + rng.normal(size=(100, 5)) for centre in centres])
    assert clustering_stability(blobs, 4) > 0.99
    assert clustering_stability(rng.normal(size=(400, 5)), 4) < 0.9


def test_candidates_are_unit_rows_and_need_matching_views() -> None:
    rng = np.random.default_rng(0)
    embedding, hog_view = rng.random((20, 8)), rng.random((20, 5))
    candidates = candidate_representations({"embedding": embedding, "hog": hog_view})
    assert set(candidates) == {"embedding", "embedding+hog"}
    assert candidates["embedding+hog"].shape == (20, 13)
    for features in candidates.values():
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-5)
    assert set(candidate_representations({"embedding": embedding})) == {"embedding"}
    with pytest.raises(UsageError, match="cannot pair"):
        candidate_representations({"embedding": embedding, "hog": hog_view[:10]})


def test_joined_candidate_equals_the_plain_expression_it_is_built_in_place_of() -> None:
    rng = np.random.default_rng(0)
    embedding, hog_view = rng.random((30, 8), dtype=np.float32), rng.random((30, 5), dtype=np.float32)
    joined = candidate_representations({"embedding": embedding, "hog": hog_view})["embedding+hog"]
    expected = l2_normalize(np.hstack([l2_normalize(embedding), l2_normalize(hog_view - hog_view.mean(axis=0))]))
    np.testing.assert_array_equal(joined, expected)


def test_stability_chooses_the_view_that_carries_the_classes(digits) -> None:
    pixels, hogs, truth = digits
    noise = np.random.default_rng(1).random(pixels.shape).astype(np.float32)

    useful_hog = AdaptiveClusterer(k=10, refine=False).fit({"embedding": noise, "hog": hogs})
    assert useful_hog.representation_ == "embedding+hog"
    useless_hog = AdaptiveClusterer(k=10, refine=False).fit({"embedding": pixels, "hog": noise})
    assert useless_hog.representation_ == "embedding"
    # Chance is about 0.11; pixels alone give about 0.8 with k-means.
    assert cluster_accuracy(truth, useless_hog.labels_) > 0.7


def test_view_agreement_tells_a_second_view_of_the_same_classes_from_noise(digits) -> None:
    pixels, hogs, _ = digits
    noise = np.random.default_rng(1).random(hogs.shape).astype(np.float32)
    own = reduce_features(pixels, "pca").coords
    labels = KMeans(10, n_init=10, random_state=0).fit_predict(own)
    agreeing = view_agreement(labels, own, reduce_features(hogs - hogs.mean(axis=0), "pca").coords)
    unrelated = view_agreement(labels, own, reduce_features(noise - noise.mean(axis=0), "pca").coords)
    assert agreeing > VIEW_AGREEMENT
    assert abs(unrelated) < 0.1
    assert view_agreement(labels, own, own) == pytest.approx(1.0)


def test_refinement_keeps_to_the_chosen_features_when_hog_disagrees(digits) -> None:
    pixels, hogs, truth = digits
    noise = np.random.default_rng(1).random(hogs.shape).astype(np.float32)
    result = AdaptiveClusterer(k=10).fit({"embedding": pixels, "hog": noise})
    assert result.representation_ == "embedding" and result.refined_on_ == "embedding"
    assert result.view_agreement_ is not None and result.view_agreement_ < VIEW_AGREEMENT
    assert cluster_accuracy(truth, result.labels_) > 0.7
    # Where the chosen candidate is every view joined, there is nothing to measure.
    joined = AdaptiveClusterer(k=10).fit({"embedding": noise, "hog": hogs})
    assert joined.refined_on_ == "embedding+hog" and joined.choice_["view_agreement"] is None


def test_the_outline_joins_the_refinement_beside_the_embedding_alone_and_never_the_choice(
    digits, digit_outlines, tmp_path
) -> None:
    pixels, hogs, truth = digits
    without = AdaptiveClusterer(k=10).fit({"embedding": pixels, "hog": hogs})
    views = {"embedding": pixels, "hog": hogs, "outline": digit_outlines}
    result = AdaptiveClusterer(k=10).fit(views)
    # The choice of features and of k sees the same candidates, with or without the outline.
    assert result.choice_["candidates"] == without.choice_["candidates"]
    assert result.representation_ == without.representation_ == "embedding"
    assert without.refined_on_ == "embedding+hog" and result.refined_on_ == "embedding+hog+outline"
    assert result.model_.views == ("embedding", "hog", "outline")
    assert cluster_accuracy(truth, result.labels_) > 0.8
    # The saved model places the rows where the refinement put them, the outline's mean included.
    result.model_.save(tmp_path / "model.npz")
    np.testing.assert_array_equal(ClusterModel.load(tmp_path / "model.npz").predict(views), result.labels_)
    with pytest.raises(UsageError, match="need the outline view"):
        result.model_.predict({"embedding": pixels, "hog": hogs})
    # Where HOG is what k-means clusters, the refinement keeps to it.
    noise = np.random.default_rng(1).random(pixels.shape).astype(np.float32)
    joined = AdaptiveClusterer(k=10).fit({"embedding": noise, "hog": hogs, "outline": digit_outlines})
    assert joined.refined_on_ == "embedding+hog" and joined.model_.views == ("embedding", "hog")
    with pytest.raises(UsageError, match="beside HOG"):
        AdaptiveClusterer(k=10).fit({"embedding": pixels, "outline": digit_outlines})


def test_hog_and_the_outline_together_weigh_what_the_embedding_does() -> None:
    rng = np.random.default_rng(0)
    embedding, hog_view, outline = (rng.random((30, width), dtype=np.float32) for width in (8, 5, 5))
    means = hog_view.mean(axis=0), outline.mean(axis=0)
    joined = join_normalized(embedding, [(hog_view, means[0]), (outline, means[1])])
    np.testing.assert_allclose(np.linalg.norm(joined[:, :8], axis=1), np.sqrt(1 / 2), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(joined[:, 8:13], axis=1), np.sqrt(1 / 4), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(joined[:, 13:], axis=1), np.sqrt(1 / 4), rtol=1e-5)


def test_auto_k_lands_near_the_ten_digits(digits) -> None:
    pixels, hogs, _ = digits
    result = AdaptiveClusterer(k="auto", refine=False).fit({"embedding": pixels, "hog": hogs})
    assert result.k_scan_ is not None and result.k_scan_.criterion == "modularity"
    assert 8 <= result.n_clusters_ <= 12
    assert result.choice_["candidates"]["embedding"]["k"] >= 2


def test_nearest_neighbours_leave_out_the_row_itself() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    neighbours = nearest_neighbours(X, 5)
    assert neighbours.shape == (50, 5)
    assert not np.any(neighbours == np.arange(50)[:, None])
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    best = np.argsort(-(unit @ unit.T) + 10 * np.eye(50), axis=1)[:, 0]
    np.testing.assert_array_equal(neighbours[:, 0], best)


def test_refinement_improves_k_means_on_real_digits_and_repeats(digits) -> None:
    pixels, hogs, truth = digits
    # The space the adaptive pipeline refines in: PCA of the L2-normalised, joined views.
    coords = reduce_features(candidate_representations({"embedding": pixels, "hog": hogs})["embedding+hog"]).coords
    start = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(coords)
    neighbours = nearest_neighbours(coords, 20)
    refined = refine_clusters(coords, start, neighbours, random_state=0)
    before, after = clustering_scores(truth, start), clustering_scores(truth, refined.labels)
    # Measured: ARI 0.70 -> 0.75, ACC 0.80 -> 0.81; the images it moves mostly move into their own class.
    assert after["ari"] > before["ari"] + 0.02
    assert after["acc"] > before["acc"]
    assert 0 < refined.changed < 0.2
    assert refined.confidence.shape == (len(truth),) and np.all((refined.confidence > 0) & (refined.confidence <= 1))
    again = refine_clusters(coords, start, neighbours, random_state=0)
    np.testing.assert_array_equal(refined.labels, again.labels)


def test_refine_best_keeps_the_start_its_objective_prefers_over_the_lower_inertia_one() -> None:
    # Two long parallel bands: k-means cuts across them (lower inertia), yet each point's
    # neighbours lie along its own band, which the refinement's objective rewards.
    rng = np.random.default_rng(0)
    band = np.repeat([0, 1], 400)
    X = np.c_[rng.uniform(0, 10, 800), 1.5 * band + rng.normal(0, 0.1, 800)].astype(np.float32)
    cut = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(X)
    assert adjusted_rand_score(cut, band) < 0.05
    neighbours = nearest_neighbours(X, 10)
    refinement, chosen = refine_best(X, [cut, band], neighbours)
    assert chosen == 1
    assert refinement.objective < refine_clusters(X, cut, neighbours).objective
    assert adjusted_rand_score(refinement.labels, band) > 0.5
    with pytest.raises(UsageError, match="at least one"):
        refine_best(X, [], neighbours)


def test_refinement_learns_from_the_neighbours_of_anchor_rows_only(digits, monkeypatch) -> None:
    pixels, hogs, truth = digits
    coords = reduce_features(candidate_representations({"embedding": pixels, "hog": hogs})["embedding+hog"]).coords
    start = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(coords)
    monkeypatch.setattr(refine, "ANCHOR_ROWS", 900)
    anchors, neighbours = refine.anchor_neighbours(coords, 20)
    assert len(anchors) == 900 and np.all(np.diff(anchors) > 0)
    assert neighbours.shape == (900, 20) and not np.any(neighbours == anchors[:, None])
    # Neighbours are found among the anchors, and named by their row in the whole collection.
    np.testing.assert_array_equal(neighbours, anchors[nearest_neighbours(coords[anchors], 20)])
    refined, _ = refine_best(coords, [start], neighbours, anchors=anchors, random_state=0)
    # Every row is assigned, not only the anchors, and the head learnt from half the rows still helps.
    assert refined.labels.shape == (len(truth),)
    assert clustering_scores(truth, refined.labels)["ari"] > clustering_scores(truth, start)["ari"]
    with pytest.raises(UsageError, match="one per anchor"):
        refine_best(coords, [start], neighbours)


def test_rival_starts_are_the_distinct_clusterings_near_the_best_inertia() -> None:
    rng = np.random.default_rng(0)
    best, other, far = (rng.integers(0, 4, 200) for _ in range(3))
    relabelled = (best + 1) % 4
    solutions = [(100.0, best), (100.2, relabelled), (100.8, other), (102.0, far)]
    rivals = rival_starts(solutions)
    assert len(rivals) == 2
    np.testing.assert_array_equal(rivals[0], best)
    np.testing.assert_array_equal(rivals[1], other)


def test_refinement_refuses_noise_labels() -> None:
    X = np.eye(4, dtype=np.float32)
    with pytest.raises(UsageError, match="noise"):
        refine_clusters(X, np.array([0, 1, -1, 1]), np.array([[1], [0], [3], [2]]))


def test_a_richer_representation_must_be_clearly_more_stable_to_be_chosen() -> None:
    assert choose_representation({"embedding": 0.995, "embedding+hog": 0.998}) == "embedding"
    assert choose_representation({"embedding": 0.72, "embedding+hog": 0.99}) == "embedding+hog"
    assert choose_representation({"embedding": 0.99, "embedding+hog": 0.80}) == "embedding"
    assert choose_representation({"embedding": 0.9}) == "embedding"


def test_stability_is_measured_on_a_sample_of_fixed_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large collections must not judge stability on more rows than small ones (k-means finds more near-ties there)."""
    import pixclust.clustering.adaptive as adaptive

    measured: list[int] = []
    real = adaptive.clustering_stability

    def recording(coords: np.ndarray, k: int, **kwargs: object) -> float:
        measured.append(len(coords))
        return real(coords, k, **kwargs)

    monkeypatch.setattr(adaptive, "clustering_stability", recording)
    rng = np.random.default_rng(0)
    views = {"embedding": rng.random((4_000, 6), dtype=np.float32), "hog": rng.random((4_000, 5), dtype=np.float32)}
    adaptive.AdaptiveClusterer(k=3, refine=False).fit(views)
    assert measured and set(measured) == {adaptive.STABILITY_SAMPLE}


def test_each_candidate_is_judged_at_the_k_it_proposes(monkeypatch: pytest.MonkeyPatch) -> None:
    import pixclust.clustering.adaptive as adaptive

    judged: list[tuple[int, int]] = []
    real = adaptive.clustering_stability

    def recording(coords: np.ndarray, k: int, **kwargs: object) -> float:
        judged.append((coords.shape[1], k))
        return real(coords, k, **kwargs)

    # The embedding (6 columns) proposes 3 clusters, embedding + HOG (11 columns) 4.
    monkeypatch.setattr(adaptive, "clustering_stability", recording)
    monkeypatch.setattr(
        adaptive.AdaptiveClusterer,
        "_choose_k",
        lambda self, sample: adaptive.CandidateScore(3 if sample.shape[1] == 6 else 4, None),
    )
    rng = np.random.default_rng(0)
    views = {"embedding": rng.random((300, 6), dtype=np.float32), "hog": rng.random((300, 5), dtype=np.float32)}
    result = adaptive.AdaptiveClusterer(k="auto", refine=False).fit(views)
    assert sorted(judged) == [(6, 3), (11, 4)]
    assert {name: score["k"] for name, score in result.choice_["candidates"].items()} == {
        "embedding": 3,
        "embedding+hog": 4,
    }


def test_result_still_answers_for_one_release_with_a_deprecation_warning(digits) -> None:
    pixels, hogs, _ = digits
    fitted = AdaptiveClusterer(k=10, refine=False).fit({"embedding": pixels, "hog": hogs})
    with pytest.warns(DeprecationWarning, match="labels_"):
        result = fitted.result_
    assert (result.labels == fitted.labels_).all() and result.representation == fitted.representation_
    assert result.record() == fitted.choice_
