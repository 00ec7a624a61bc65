"""Labelled image sets that need no download: scikit-learn's digits, Debian's Fashion-MNIST, scikit-image's photos.

The quality tests and the bench scripts build image folders from
these, so every figure pixclust reports can be reproduced offline.
Both grey sets are also written coloured at random (:func:`write_coloured_tree`),
where a clustering must ignore colour, and crops of scikit-image's colour
photographs (:func:`write_photo_crops`) make a set where colour and texture are
what tells the classes apart.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.errors import UsageError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx (MNIST format) .gz file as a numpy array."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) of Fashion-MNIST's ``"test"`` or ``"train"`` split."""
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise UsageError(f"Fashion-MNIST split {split!r} is not known; use 'test' or 'train'")
    images_file = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_file.exists():
        raise UsageError(f"{images_file} is missing; install it with: apt-get install dataset-fashion-mnist")
    return read_idx(images_file), read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")


# scikit-image's colour sample images that ship with it (no download); ``cat`` is ``chelsea`` again.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "colorwheel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "retina",
    "rocket",
    "stereo_motorcycle",
)


def photo(name: str) -> np.ndarray:
    """One of ``PHOTOS`` as H x W x 3 uint8 (transparency laid on white; the left view of a stereo pair)."""
    import skimage.data

    if name not in PHOTOS:
        raise UsageError(f"photo {name!r} is not one of {', '.join(PHOTOS)}")
    pixels = getattr(skimage.data, name)()
    if isinstance(pixels, tuple):
        pixels = pixels[0]
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:4].astype(np.float32) / 255
        pixels = (pixels[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return pixels


def write_photo_crops(root: Path, *, per_photo: int = 80, side: int = 128, random_state: int = 0) -> Path:
    """Random square crops of each of ``PHOTOS``, one folder per photo (the class is the photo a crop came from).

    A crop covers 12-30% of the photo's shorter side, anywhere in it, and is resized to ``side``
    pixels; crops of one photo overlap, as pictures of one scene do. Files already there are kept.
    """
    from PIL import Image

    rng = np.random.default_rng(random_state)
    for name in PHOTOS:
        pixels = photo(name)
        height, width = pixels.shape[:2]
        for index in range(per_photo):
            crop = int(min(height, width) * rng.uniform(0.12, 0.3))
            top, left = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
            target = root / name / f"{index:03d}.png"
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[top : top + crop, left : left + crop]).resize(
                (side, side), Image.Resampling.BICUBIC
            )
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
    return root


def grey_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as grey 8 x 8 uint8 pictures (its 0-16 levels stretched to 0-255), and their classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8), digits.target


def colour_at_random(images: np.ndarray, *, random_state: int = 0) -> np.ndarray:
    """Grey N x H x W images as N x H x W x 3, each with its own random ink and paper colours.

    Ink and paper are drawn apart in brightness so the shape stays visible; colour says
    nothing about the class, so a clustering that groups by colour is wrong.
    """
    rng = np.random.default_rng(random_state)
    paper = rng.uniform(0, 255, size=(len(images), 1, 1, 3))
    ink = rng.uniform(0, 255, size=(len(images), 1, 1, 3))
    # Keep the mean brightness of ink and paper at least 80 apart, swapping the ends where needed.
    too_close = np.abs(ink.mean(axis=3) - paper.mean(axis=3))[:, 0, 0] < 80
    ink[too_close] = 255 - paper[too_close]
    weight = images.astype(np.float32)[..., None] / 255
    return (paper * (1 - weight) + ink * weight).round().astype(np.uint8)


def write_image_tree(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    fmt: str = "png",
    class_names: tuple[str, ...] = FASHION_CLASSES,
) -> Path:
    """One folder per class (``class_names[label]``, Fashion-MNIST's by default); ``size`` upsamples each image.

    ``size`` makes e.g. 640x480 'photos'; ``images`` are grey N x H x W or colour N x H x W x 3.

    Files already there are kept, so a second call reuses them (and a run folder's embeddings of them).
    """
    from PIL import Image

    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        target = root / class_names[int(label)] / f"{index:05d}.{fmt}"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels).convert("RGB")  # grey (H x W) or colour (H x W x 3)
        if size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG" if fmt == "jpg" else fmt.upper(), **({"quality": 90} if fmt == "jpg" else {}))
    return root


# scikit-image's grey sample photos that ship with it; tiles of them join the colour ones as originals.
GREY_PHOTOS = ("camera", "coins", "moon")
# Tiles flatter than this (standard deviation of grey levels) are left out: two blank tiles are
# the same picture, which would make the duplicate set's answers wrong.
MIN_TILE_CONTRAST = 20.0
DUPLICATE_TILE = 192
# Mean HSV saturation (0-255) a tile needs before its recoloured copy counts as a different picture:
# turning the hue of a grey or nearly grey tile changes next to nothing.
MIN_RECOLOUR_SATURATION = 40


def photo_tiles(*, side: int = DUPLICATE_TILE) -> dict[str, np.ndarray]:
    """Non-overlapping ``side`` x ``side`` tiles of every sample photo, by name (``astronaut-r0c1``), as RGB uint8.

    Tiles of one photo never share pixels, so none is a crop of another, yet many look alike
    (the Hubble field's stars, the retina's vessels): different pictures of similar scenes.
    """
    import skimage.data

    tiles = {}
    for name in (*PHOTOS, *GREY_PHOTOS):
        pixels = photo(name) if name in PHOTOS else np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2)
        for row in range(pixels.shape[0] // side):
            for col in range(pixels.shape[1] // side):
                tile = pixels[row * side : (row + 1) * side, col * side : (col + 1) * side]
                if tile.mean(axis=2).std() >= MIN_TILE_CONTRAST:
                    tiles[f"{name}-r{row}c{col}"] = np.ascontiguousarray(tile)
    return tiles


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)


def _same(pixels: np.ndarray, rng: np.random.Generator):
    """The original saved again the same way: a file with the same bytes."""
    return _pil(pixels)


def _half_size(pixels: np.ndarray, rng: np.random.Generator):
    from PIL import Image

    image = _pil(pixels)
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def _crop_borders(pixels: np.ndarray, rng: np.random.Generator):
    """10% of the width and height cut from each side."""
    height, width = pixels.shape[:2]
    top, left = height // 10, width // 10
    return _pil(pixels[top : height - top, left : width - left])


def _brighter(pixels: np.ndarray, rng: np.random.Generator):
    return _pil(np.clip(pixels.astype(np.float32) * 1.25, 0, 255).round().astype(np.uint8))


def _rotated(pixels: np.ndarray, rng: np.random.Generator):
    from PIL import Image

    return _pil(pixels).rotate(3, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def _noisy(pixels: np.ndarray, rng: np.random.Generator):
    noise = rng.normal(0, 12, size=pixels.shape)
    return _pil(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


def _grey(pixels: np.ndarray, rng: np.random.Generator):
    return _pil(pixels).convert("L").convert("RGB")


def _gamma(pixels: np.ndarray, rng: np.random.Generator):
    return _pil((255 * (pixels / 255.0) ** 0.7).round().astype(np.uint8))


def _recoloured(pixels: np.ndarray, rng: np.random.Generator):
    """The hue turned half way round the colour wheel: red becomes cyan, blue becomes yellow."""
    from PIL import Image

    hsv = np.asarray(_pil(pixels).convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + 128) % 256).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def colourful(pixels: np.ndarray) -> bool:
    """Whether a picture has colour enough for a recoloured copy to be a different picture (mean saturation)."""
    return float(np.asarray(_pil(pixels).convert("HSV"))[..., 1].mean()) >= MIN_RECOLOUR_SATURATION


# Edits that leave the same picture (a duplicate of its original), with the format each is saved in.
DUPLICATE_EDITS = {
    "copy": (_same, "png"),
    "half-size": (_half_size, "png"),
    "jpeg-q25": (None, "jpg"),
    "crop-10": (_crop_borders, "png"),
    "brighter-25": (_brighter, "png"),
    "rotate-3": (_rotated, "png"),
    "noise": (_noisy, "png"),
    "greyscale": (_grey, "png"),
    "gamma-0.7": (_gamma, "png"),
}
# Edits that make a different picture: not a duplicate of its original.
DIFFERENT_EDITS = {"recoloured": (_recoloured, "png")}


@dataclass(frozen=True)
class DuplicateFile:
    """One file of the duplicate set: the tile it shows (None: a distractor of its own) and the edit made."""

    path: str
    original: str | None
    edit: str


def write_duplicate_set(
    root: Path, *, distractors: int = 300, tiles: tuple[str, ...] | None = None, random_state: int = 0
) -> list[DuplicateFile]:
    """Originals (photo tiles), their edited copies, recoloured copies and Fashion-MNIST distractors.

    ``root/<tile>/original.png`` and ``root/<tile>/<edit>.<ext>`` for every edit;
    ``root/fashion/<n>.png`` are garments at the tiles' size, look-alikes of each other
    that no edit made. Files already there are kept. Two files are duplicates when both
    have the same ``original`` and neither edit is in ``DIFFERENT_EDITS``. ``tiles`` keeps
    only the tiles so named (``photo_tiles``' names).
    """
    from PIL import Image

    rng = np.random.default_rng(random_state)
    files: list[DuplicateFile] = []

    def save(image: Image.Image, target: Path, fmt: str) -> None:
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 25} if fmt == "jpg" else {}))

    for name, pixels in photo_tiles().items():
        if tiles is not None and name not in tiles:
            continue
        save(_pil(pixels), root / name / "original.png", "png")
        files.append(DuplicateFile(str(root / name / "original.png"), name, "original"))
        for edits, same in ((DUPLICATE_EDITS, True), (DIFFERENT_EDITS if colourful(pixels) else {}, False)):
            for edit, (make, fmt) in edits.items():
                target = root / name / f"{edit}.{fmt}"
                save(make(pixels, rng) if make else _pil(pixels), target, fmt)
                files.append(DuplicateFile(str(target), name if same else None, edit))
    if distractors and FASHION_DIR.exists():
        images, _ = fashion_mnist("test")
        _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
        for index in np.sort(first)[:distractors]:
            target = root / "fashion" / f"{index:05d}.png"
            save(_pil(images[index]).convert("RGB").resize((DUPLICATE_TILE, DUPLICATE_TILE)), target, "png")
            files.append(DuplicateFile(str(target), None, "distractor"))
    return files
