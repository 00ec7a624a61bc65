"""Shared fixtures: real images built at run time, and the real default model loaded once."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pixclust.embedding.extractor import FeatureExtractor, load_extractor
from pixclust.runs.pipeline import RunConfig, RunResult, run

# Three digit classes that look unlike each other, so a correct pipeline separates them.
DIGIT_CLASSES = (0, 1, 6)
PER_CLASS = 60


def write_digit_tree(root: Path, *, per_class: int = PER_CLASS) -> Path:
    """scikit-learn digits as 64x64 images in nested folders: <class>/<batch>/digit_<i>.<png|jpg>."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in DIGIT_CLASSES:
        indices = np.flatnonzero(digits.target == label)[:per_class]
        for n, index in enumerate(indices):
            grey = np.clip(digits.images[index] * 16, 0, 255).astype(np.uint8)
            image = Image.fromarray(grey).resize((64, 64), Image.Resampling.NEAREST).convert("RGB")
            folder = root / str(label) / f"batch{n % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            extension = "jpg" if n % 3 == 0 else "png"
            image.save(folder / f"digit_{index:04d}.{extension}", quality=95)
    return root


def add_bad_files(root: Path) -> dict[str, str]:
    """The three kinds of bad file the acceptance test names; returns name -> expected reason."""
    bad = root / "bad"
    bad.mkdir()
    good = root / "0" / "batch0"
    source = next(good.glob("*.jpg"))
    data = source.read_bytes()
    (bad / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("these are my notes, not a picture\n")
    return {"corrupt.jpg": "corrupt or truncated", "empty.jpg": "empty file", "notes.png": "not an image"}


def plant_duplicates(root: Path) -> None:
    """An exact copy of a digit (``*_copy.png``), and ``photos/photo.jpg`` with a smaller JPEG copy.

    The near copy is a photo: the network sees a digit enlarged 2x as another
    texture (cosine 0.6 to 0.8 to the original), and real near-duplicates are photos.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_image

    digit = sorted(root.rglob("*.png"))[0]
    shutil.copyfile(digit, digit.with_name(f"{digit.stem}_copy.png"))
    photos = root / "photos"
    photos.mkdir()
    photo = Image.fromarray(load_sample_image("china.jpg"))
    photo.save(photos / "photo.jpg", quality=90)
    # 480 wide at q75 stays near cosine 0.96; a 320-wide q70 copy is at 0.91, too close to the 0.90 threshold.
    photo.resize((480, 320), Image.Resampling.BILINEAR).save(photos / "photo-small.jpg", quality=75)


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root (symlinks not followed) with its content hash and mtime."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            stat = path.lstat()
            content = b"" if path.is_symlink() else path.read_bytes()
            found[str(path.relative_to(root))] = (hashlib.sha256(content).hexdigest(), stat.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported networks go to a cache of this test session (shared with the CLI subprocesses)."""
    cache = tmp_path_factory.mktemp("pixclust-cache")
    os.environ["PIXCLUST_CACHE"] = str(cache)
    # The key that seals move journals, too: a test never writes into the user's ~/.local/state.
    os.environ["PIXCLUST_STATE"] = str(tmp_path_factory.mktemp("pixclust-state"))
    return cache


@pytest.fixture(scope="session")
def default_extractor() -> FeatureExtractor:
    return load_extractor()


@pytest.fixture(scope="session")
def digit_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention tree of 180 digit images; tests must not write into it."""
    return write_digit_tree(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digit_run(digit_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder over the 180 digits (0, 1, 6): embeddings and the model record, as 'pixclust cluster' leaves."""
    from pixclust.runs.pipeline import embed
    from pixclust.runs.record import RunRecord

    run_dir = tmp_path_factory.mktemp("digit_run")
    embeddings = embed(digit_tree, out=run_dir, quiet=True)
    RunRecord(model=embeddings.model.to_dict()).write(run_dir / "run.json")
    return run_dir


@pytest.fixture
def messy_tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh tree of 45 digit images in nested folders plus the three bad files."""
    root = write_digit_tree(tmp_path / "photos", per_class=15)
    return root, add_bad_files(root)


@pytest.fixture
def large_messy_tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """300 digit images in nested folders plus the three bad files."""
    root = write_digit_tree(tmp_path / "photos", per_class=100)
    return root, add_bad_files(root)


@pytest.fixture(scope="session")
def digits_default_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The default command (--k 10, --truth folders, no report) on scikit-learn's 1,797 digits written as images.

    Shared by the quality guard and the sharded path's comparison, which both need exactly this run.
    """
    from pixclust.demo import write_digits

    root = tmp_path_factory.mktemp("digits_default")
    folder = write_digits(root / "digits")
    return run(RunConfig(source=str(folder), out=str(root / "run"), k=10, truth="folders", report=False), quiet=True)


@pytest.fixture(scope="session")
def fashion_default_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The default command on 3,000 Fashion-MNIST test images (the first 300 of each class), as above."""
    from real_data import FASHION_DIR, fashion_mnist, write_image_tree

    if not FASHION_DIR.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    images, labels = fashion_mnist("test")
    rows = np.concatenate([np.flatnonzero(labels == c)[:300] for c in range(10)])
    root = tmp_path_factory.mktemp("fashion_default")
    folder = write_image_tree(root / "fashion", images[rows], labels[rows])
    return run(RunConfig(source=str(folder), out=str(root / "run"), k=10, truth="folders", report=False), quiet=True)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """A local Ray instance of two CPUs for the module's tests (Ray imported, initialised, and shut down after)."""
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
