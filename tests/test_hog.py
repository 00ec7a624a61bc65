"""pixclust's HOG and outline against scikit-image's and SciPy's own, on real pictures and on the hard cases."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image
from scipy.ndimage import binary_fill_holes
from skimage.feature import hog
from sklearn.datasets import load_digits

from pixclust.embedding.hog import HOG_DIM, HOG_SIDE, hog_descriptor
from pixclust.embedding.ink import PAPER_TOLERANCE, border_pixels
from pixclust.embedding.outline import outline_mask

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page")


def _side(picture: np.ndarray) -> np.ndarray:
    mode = "L" if picture.ndim == 2 else "RGB"
    resized = Image.fromarray(picture, mode).resize((HOG_SIDE, HOG_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _photos() -> list[np.ndarray]:
    """scikit-image's sample photographs, colour and grey, as RGB."""
    return [_side(np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))) for name in PHOTOS]


def _digits() -> list[np.ndarray]:
    images = load_digits().images[:40]
    return [_side((255 - image * 255 / 16).astype(np.uint8)) for image in images]


def _garments() -> list[np.ndarray]:
    from real_data import FASHION_DIR, fashion_mnist

    if not FASHION_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    return [_side(image) for image in fashion_mnist("test")[0][:40]]


def _hard_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    rows, cols = np.indices((HOG_SIDE, HOG_SIDE))
    return [
        rng.integers(0, 256, (HOG_SIDE, HOG_SIDE), dtype=np.uint8),
        np.zeros((HOG_SIDE, HOG_SIDE), np.uint8),
        np.full((HOG_SIDE, HOG_SIDE), 255, np.uint8),
        # The steepest gradients there are, in every direction: 0 and 255 side by side.
        (((rows // 3 + cols // 5) % 2) * 255).astype(np.uint8),
        ((rows > cols) * 255).astype(np.uint8),
    ]


def _reference(picture: np.ndarray) -> np.ndarray:
    return hog(picture, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2)).astype(np.float32)


@pytest.mark.parametrize("pictures", [_photos, _digits, _garments, _hard_cases])
def test_hog_is_scikit_images_to_float32_rounding(pictures) -> None:
    for picture in pictures():
        grey = picture if picture.ndim == 2 else np.asarray(Image.fromarray(picture).convert("L"))
        ours = hog_descriptor(grey)
        assert ours.shape == (HOG_DIM,) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, _reference(grey), rtol=0, atol=2e-6)


def test_the_outlines_hog_is_scikit_images() -> None:
    for picture in _photos() + [np.repeat(digit[..., None], 3, axis=2) for digit in _digits()]:
        mask = outline_mask(picture)
        np.testing.assert_allclose(hog_descriptor(mask), _reference(mask), rtol=0, atol=2e-6)


def test_hog_refuses_what_it_cannot_read_as_whole_numbers() -> None:
    picture = np.zeros((HOG_SIDE, HOG_SIDE), np.uint8)
    for wrong in (picture.astype(np.float32), picture[:64], np.zeros((HOG_SIDE, HOG_SIDE, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8 picture"):
            hog_descriptor(wrong)


def _fill_holes_reference(pixels: np.ndarray) -> np.ndarray:
    colours = pixels.astype(np.float32) / 255.0
    paper = np.median(border_pixels(colours), axis=0)
    return binary_fill_holes(np.linalg.norm(colours - paper, axis=2) > PAPER_TOLERANCE).astype(np.uint8)


def test_the_outline_fills_what_binary_fill_holes_fills() -> None:
    white = np.full((40, 40, 3), 255, np.uint8)
    ring = white.copy()
    ring[10:30, 10:30] = 0
    ring[14:26, 14:26] = 255
    # Paper that touches the outside only corner to corner is a hole (side-to-side joins only).
    corner = white.copy()
    corner[0:3, 0:3] = 0
    corner[1, 1] = 255
    corner[0, 0] = 255
    # A bay open to the edge is not a hole.
    bay = white.copy()
    bay[5:35, 5:35] = 0
    bay[10:30, 10:40] = 255
    pictures = [ring, corner, bay] + [np.repeat(digit[..., None], 3, axis=2) for digit in _digits()] + _photos()
    for picture in pictures:
        mask = outline_mask(picture)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, _fill_holes_reference(picture))
    assert outline_mask(ring)[20, 20] == 1
    assert outline_mask(corner)[1, 1] == 1
    assert outline_mask(bay)[20, 35] == 0
