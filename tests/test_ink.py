"""Ink on plain paper: what is read as such, what turning it does, and when a run asks for it."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from real_data import colour_at_random, grey_digits, write_image_tree, write_photo_crops

from pixclust.embedding.discover import walk_candidates
from pixclust.embedding.hog import HOG_DIM
from pixclust.embedding.ink import INK_FORM, collection_wants_ink, normalise_ink, read_ink
from pixclust.embedding.ink_choice import InkChoice, check_ink, choose_ink, network_model, outline_wanted
from pixclust.embedding.models import resolve_model
from pixclust.embedding.outline import outline_mask
from pixclust.embedding.store import EmbeddingStore
from pixclust.embedding.transforms import HogTransform
from pixclust.errors import UsageError
from pixclust.runs.add import add
from pixclust.runs.pipeline import RunConfig, run

SIDE = 224


def network_input(picture: np.ndarray) -> np.ndarray:
    """The picture as an RGB network input, as the decode workers resize it."""
    image = Image.fromarray(picture).convert("RGB")
    return np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BICUBIC))


def photo(name: str) -> np.ndarray:
    import skimage.data

    return network_input(getattr(skimage.data, name)())


def test_a_digit_in_any_ink_on_any_paper_becomes_the_same_grey_picture() -> None:
    grey, _ = grey_digits()
    reference = 255 - network_input(grey[0])[..., 0].astype(np.float32)
    coloured = colour_at_random(np.repeat(grey[:1], 40, axis=0), random_state=1)
    light_papers = 0
    for picture in coloured:
        pixels = network_input(picture)
        reading = read_ink(pixels)
        assert reading is not None
        light_papers += reading.paper.mean() > 0.5
        turned = normalise_ink(pixels)
        assert np.array_equal(turned[..., 0], turned[..., 2])
        assert np.corrcoef(turned[..., 0].ravel(), reference.ravel())[0, 1] > 0.98
    # Both polarities were turned, not only dark ink on light paper.
    assert 5 < light_papers < 35


def test_grey_ink_on_black_turns_to_the_same_ink_on_white() -> None:
    grey, _ = grey_digits()
    pixels = network_input(grey[7])
    reading = read_ink(pixels)
    assert reading is not None and np.allclose(reading.paper, 0)
    turned = normalise_ink(pixels)
    assert np.corrcoef(turned[..., 0].ravel(), 255 - pixels[..., 0].ravel())[0, 1] > 0.99
    assert np.array_equal(normalise_ink(255 - pixels), turned)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_colour_photographs_are_not_ink_on_paper(name: str) -> None:
    pixels = photo(name)
    assert read_ink(pixels) is None
    assert normalise_ink(pixels) is pixels


def test_a_collection_asks_for_ink_only_where_nearly_all_of_it_is_and_the_papers_differ(tmp_path: Path) -> None:
    grey, _ = grey_digits()
    coloured = colour_at_random(grey[:200], random_state=0)
    assert collection_wants_ink(network_input(picture) for picture in coloured)[0]
    # One paper, black or white, needs nothing made alike; both papers in one collection do.
    assert collection_wants_ink(network_input(picture) for picture in grey[:200]) == (False, 200, 200, 0)
    assert collection_wants_ink(network_input(255 - picture) for picture in grey[:200]) == (False, 200, 200, 0)
    mixed = [255 - picture if i % 3 == 0 else picture for i, picture in enumerate(grey[:200])]
    assert collection_wants_ink(network_input(picture) for picture in mixed) == (True, 200, 200, 67)
    crops = write_photo_crops(tmp_path / "crops", per_photo=20)
    pictures = [network_input(np.asarray(Image.open(file))) for file in sorted(crops.glob("*/*.png"))]
    wanted, read, ink, _ = collection_wants_ink(pictures)
    assert not wanted and ink < 0.2 * read


def test_ink_names_a_network_or_hog_fed_ink_as_grey() -> None:
    spec = resolve_model("efficientnet-lite0+ink")
    assert spec.ink and spec.timm_name == resolve_model("efficientnet-lite0").timm_name
    assert resolve_model("timm:resnet18+ink").ink and resolve_model("hog+ink").ink
    for name in ("pixels+ink", "efficientnet-lite0+ink+ink"):
        with pytest.raises(UsageError, match="follows the name of a network or hog"):
            resolve_model(name)


def test_the_outline_is_the_ink_with_its_holes_filled_on_any_paper() -> None:
    grey, classes = grey_digits()
    zero = np.kron(grey[np.flatnonzero(classes == 0)[0]], np.ones((16, 16), dtype=np.uint8))
    # The loop of a zero is a hole in its ink: the outline is the whole figure.
    assert zero[64, 64] < 40
    for coloured in colour_at_random(np.repeat(zero[None], 3, axis=0), random_state=2):
        mask = outline_mask(coloured)
        assert mask[64, 64] == 1 and mask[:8, :8].sum() == 0
        assert set(np.unique(mask)) == {0.0, 1.0}
        # Only the faintest ink, a few levels off the paper, may fall either side with the colours.
        assert np.mean(mask == outline_mask(np.repeat(zero[..., None], 3, axis=2))) > 0.97


def test_the_outline_follows_hog_in_the_outline_models_vectors() -> None:
    grey, _ = grey_digits()
    for picture in (Image.fromarray(grey[5]), Image.fromarray(colour_at_random(grey[5:6])[0])):
        for ink in (False, True):
            plain, both = HogTransform(ink)(picture), HogTransform(ink, outline=True)(picture)
            assert plain.shape == (HOG_DIM,) and both.shape == (2 * HOG_DIM,)
            np.testing.assert_array_equal(both[:HOG_DIM], plain)
            assert np.linalg.norm(both[HOG_DIM:] - plain) > 1
    assert resolve_model("hog+outline").dim == resolve_model("hog+ink+outline").dim == 2 * HOG_DIM
    assert resolve_model("hog+ink+outline").ink and resolve_model("hog+ink+outline").outline
    for name in ("efficientnet-lite0+outline", "hog+outline+outline", "pixels+outline"):
        with pytest.raises(UsageError, match=r"comes once, last, after hog or hog\+ink"):
            resolve_model(name)
    with pytest.raises(UsageError, match="follows the name of a network or hog"):
        resolve_model("hog+outline+ink")


def test_the_outline_is_wanted_where_the_collection_is_ink_on_paper_on_one_paper_or_many() -> None:
    assert outline_wanted("efficientnet-lite0+ink", None)
    assert not outline_wanted("efficientnet-lite0", None)
    # Grey digits: every picture ink on one paper, so the network is fed them as they are, but they have outlines.
    assert outline_wanted("efficientnet-lite0", InkChoice(False, 256, 256, 0))
    assert not outline_wanted("efficientnet-lite0", InkChoice(False, 256, 13, 0))


def test_hog_of_ink_reads_the_same_shape_in_any_ink_on_any_paper() -> None:
    grey, _ = grey_digits()
    pictures = [Image.fromarray(picture) for picture in colour_at_random(np.repeat(grey[:1], 20, axis=0))]
    least = {}
    for ink in (True, False):
        vectors = np.stack([HogTransform(ink)(picture) for picture in pictures])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        least[ink] = (vectors @ vectors.T).min()
    # The grey of a coloured picture can leave ink and paper a few levels apart, and HOG then reads noise.
    assert least[True] > 0.97 and least[False] < 0.8


def test_a_run_over_coloured_digits_feeds_them_as_grey_and_a_grey_run_does_not(tmp_path: Path) -> None:
    grey, labels = grey_digits()
    rows = np.flatnonzero(np.isin(labels, (0, 1, 6)))[:120]
    coloured = write_image_tree(tmp_path / "coloured", colour_at_random(grey[rows], random_state=0), labels[rows])
    plain = write_image_tree(tmp_path / "grey", grey[rows], labels[rows])
    assert choose_ink(walk_candidates(plain), resolve_model("efficientnet-lite0"), max_pixels=10**8).wanted is False

    turned = run(RunConfig(str(coloured), str(tmp_path / "run"), k=3, truth="folders", report=False), quiet=True)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["model"]
    assert record["model"] == "efficientnet-lite0+ink" and record["preprocessing"]["ink"] == INK_FORM
    # HOG reads the same grey, and the collection being ink on paper, each picture's outline too.
    assert record["hog_model"] == "hog+ink+outline"
    assert EmbeddingStore(tmp_path / "run" / "views" / "hog").load().model_id.startswith("hog+ink+outline:")
    assert (
        record["ink_sample"]["wanted"] and record["ink_sample"]["read"] == record["ink_sample"]["ink_on_paper"] == 120
    )
    kept = run(
        RunConfig(str(coloured), str(tmp_path / "kept"), k=3, truth="folders", report=False, ink="off"), quiet=True
    )
    assert kept.embeddings.model.model == "efficientnet-lite0" and kept.ink is None
    # Told not to read the pictures as ink, the run has no sample saying they are, so HOG stays alone.
    assert kept.hog_model == "hog"
    # Colour and light-or-dark split the three digits when they are kept; as grey ink the digits group.
    assert turned.scores["nmi"] > kept.scores["nmi"] + 0.1

    # Added images are turned as the run's were, HOG included, and land with their digits.
    more = np.flatnonzero(np.isin(labels, (0, 1, 6)))[120:150]
    new = write_image_tree(tmp_path / "new", colour_at_random(grey[more], random_state=1), labels[more])
    added = add(tmp_path / "run", [new], quiet=True)
    hog = EmbeddingStore(tmp_path / "run" / "views" / "hog").load()
    assert len(hog) == 150 and hog.model_id.startswith("hog+ink+outline:")
    with open(tmp_path / "run" / "clusters.csv", newline="") as stream:
        cluster_of = {row["path"]: row["cluster"] for row in csv.DictReader(stream)}
    added_paths = set(added.paths)
    runs_of_digit: dict[str, list[str]] = {}
    for path, cluster in cluster_of.items():
        if path not in added_paths:
            runs_of_digit.setdefault(Path(path).parent.name, []).append(cluster)
    home = {digit: Counter(clusters).most_common(1)[0][0] for digit, clusters in runs_of_digit.items()}
    placed = [cluster_of[path] == home[Path(path).parent.name] for path in added.paths]
    assert np.mean(placed) >= 0.8


def test_the_ink_setting_names_the_network_and_samples_only_where_asked() -> None:
    def never_walked() -> list[str]:
        raise AssertionError("no sample was wanted, so no folder is walked")

    for model, ink, named in (
        ("efficientnet-lite0", "off", "efficientnet-lite0"),
        ("efficientnet-lite0", "on", "efficientnet-lite0+ink"),
        ("efficientnet-lite0+ink", "auto", "efficientnet-lite0+ink"),
        ("hog", "auto", "hog"),
        ("pixels", "on", "pixels"),
    ):
        assert network_model(model, ink, never_walked, max_pixels=10**8) == (named, None)
    with pytest.raises(UsageError, match="ink='sometimes' is not known"):
        check_ink("efficientnet-lite0", "sometimes")
    with pytest.raises(UsageError, match="turns ink on paper to grey, and ink='off' asks not to"):
        check_ink("efficientnet-lite0+ink", "off")
    with pytest.raises(UsageError, match="is not a network, so ink='on' has no input to turn"):
        check_ink("hog", "on")
