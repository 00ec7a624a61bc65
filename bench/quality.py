"""Cluster quality without labels: baselines, the ceiling, and pixclust's default command, on five data sets.

Run: .venv/bin/python bench/quality.py [WORK_DIR] [--only NAME,NAME]
Data sets, written as PNG files under WORK_DIR (default bench-work/quality, kept so a
second run reuses them and their embeddings):
  fashion            Fashion-MNIST's test set (10,000 images, Debian's dataset-fashion-mnist)
  digits             scikit-learn's digits (1,797)
  fashion-coloured   3,000 of the same (300 a class), each with random ink and paper colours
  digits-coloured    the digits so coloured: colour says nothing of the class
  photo-crops        800 crops of ten scikit-image colour photos; the class is the photo
Rows:
  pixels + k-means     k-means (10 starts) on the raw pixel vectors
  N2D-like             N2D (McConville et al. 2020): an autoencoder on pixels
                       (d-500-500-2000-10), UMAP of its codes to 10-d, GMM (grey sets only)
  pixclust default     `pixclust cluster FOLDER --k K` (K = the classes), the command a user
                       types; notes give the features, the k `--k auto` chooses, and
                       ACC / probe
  linear probe         the ceiling: 5-fold cross-validated logistic regression on the exact
                       features the default command's last step clusters (its PCA-128 of the
                       representation it refined on), and 20-nearest-neighbour accuracy there
Labels are used only to score and for the probe.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import fashion_mnist, write_image_tree
from real_data import PHOTOS, colour_at_random, write_photo_crops
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import pixclust
from pixclust.clustering.adaptive import PCA_COMPONENTS
from pixclust.clustering.metrics import clustering_scores
from pixclust.clustering.reduce import reduce_features
from pixclust.clustering.views import HOG_VIEW, handmade_views, view_features, view_means
from pixclust.demo import write_digits
from pixclust.runs.folder import VIEWS_DIR
from pixclust.runs.pipeline import RunConfig, run

SEED = 0
N_CLASSES = 10
COLOURED_PER_CLASS = 300
PROBE_FOLDS = 5
PROBE_NEIGHBOURS = 20


@dataclass
class DataSet:
    """A folder of labelled images and its pixels (N x features, for the pixel baselines)."""

    folder: Path
    pixels: np.ndarray
    truth: np.ndarray
    n2d: bool


def fashion(work: Path) -> DataSet:
    images, labels = fashion_mnist("test")
    return DataSet(
        write_image_tree(work / "fashion", images, labels), images.reshape(len(images), -1) / 255.0, labels, True
    )


def digits(work: Path) -> DataSet:
    pixels, truth = digits_pixels()
    return DataSet(write_digits(work / "digits"), pixels, truth, True)


def fashion_coloured(work: Path) -> DataSet:
    images, labels = fashion_mnist("test")
    rows = np.concatenate([np.flatnonzero(labels == c)[:COLOURED_PER_CLASS] for c in range(N_CLASSES)])
    coloured = colour_at_random(images[rows], random_state=SEED)
    folder = write_image_tree(work / "fashion-coloured", coloured, labels[rows])
    return DataSet(folder, coloured.reshape(len(rows), -1) / 255.0, labels[rows], False)


def digits_coloured(work: Path) -> DataSet:
    from sklearn.datasets import load_digits

    loaded = load_digits()
    coloured = colour_at_random(np.clip(loaded.images * (255.0 / 16.0), 0, 255), random_state=SEED)
    names = tuple(str(digit) for digit in range(N_CLASSES))
    folder = write_image_tree(work / "digits-coloured", coloured, loaded.target, class_names=names)
    return DataSet(folder, coloured.reshape(len(coloured), -1) / 255.0, loaded.target, False)


def photo_crops(work: Path) -> DataSet:
    from PIL import Image

    folder = write_photo_crops(work / "photo-crops", random_state=SEED)
    files = sorted(folder.glob("*/*.png"))
    # The baseline's pixels: each crop at 32 x 32 (128 x 128 x 3 would be 49,152 numbers a crop).
    pixels = np.stack([np.asarray(Image.open(file).resize((32, 32))).reshape(-1) / 255.0 for file in files])
    truth = np.array([PHOTOS.index(file.parent.name) for file in files])
    return DataSet(folder, pixels, truth, False)


DATA_SETS: dict[str, Callable[[Path], DataSet]] = {
    "fashion": fashion,
    "digits": digits,
    "fashion-coloured": fashion_coloured,
    "digits-coloured": digits_coloured,
    "photo-crops": photo_crops,
}


def digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data / 16.0, digits.target


def autoencoder_codes(pixels: np.ndarray, *, epochs: int = 30, random_state: int = SEED) -> np.ndarray:
    """N2D's autoencoder: dense d-500-500-2000-10 with ReLU, trained on reconstruction error (Adam)."""
    import torch

    torch.manual_seed(random_state)
    data = torch.from_numpy(pixels.astype(np.float32))
    sizes = [data.shape[1], 500, 500, 2000, N_CLASSES]

    def stack(widths: list[int]) -> torch.nn.Sequential:
        layers: list[torch.nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(torch.nn.Linear(width_in, width_out))
            if index < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    encoder, decoder = stack(sizes), stack(sizes[::-1])
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    generator = torch.Generator().manual_seed(random_state)
    for _ in range(epochs):
        for batch in torch.randperm(len(data), generator=generator).split(256):
            loss = torch.nn.functional.mse_loss(decoder(encoder(data[batch])), data[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return encoder(data).numpy()


def n2d_labels(pixels: np.ndarray) -> np.ndarray:
    import umap

    codes = autoencoder_codes(pixels)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        manifold = umap.UMAP(n_components=N_CLASSES, n_neighbors=20, min_dist=0.0, random_state=SEED).fit_transform(
            codes
        )
    return GaussianMixture(N_CLASSES, covariance_type="full", random_state=SEED).fit_predict(manifold)


@dataclass
class DefaultRun:
    scores: dict[str, float]
    model: str
    seconds: float
    auto_k: int
    representation: str
    refined_on: str | None
    features: np.ndarray
    truth: np.ndarray


def pixclust_runs(folder: Path, out: Path, k: int) -> DefaultRun:
    """The default command with --k K and with --k auto, and the features its last step clustered."""
    started = time.perf_counter()
    fixed = run(RunConfig(source=str(folder), out=str(out), k=k, truth="folders", report=False), quiet=True)
    seconds = time.perf_counter() - started
    auto = run(RunConfig(source=str(folder), out=str(out), k="auto", truth="folders", report=False), quiet=True)
    choice = fixed.clustering.choice
    # Every view comes back from the run folder's stores, embedded once by the runs above with the models the
    # run chose (its network fed ink on paper as grey, and HOG with the outline, where the collection is that).
    embedding = pixclust.embed(str(folder), model=fixed.embeddings.model.model, out=str(out), quiet=True)
    hog = pixclust.embed(str(folder), model=fixed.hog_model, out=str(out / VIEWS_DIR / HOG_VIEW), quiet=True)
    hog_rows = {path: row for row, path in enumerate(hog.paths)}
    views = {"embedding": embedding.vectors} | handmade_views(hog.vectors[[hog_rows[path] for path in embedding.paths]])
    space = tuple(str(choice["refined_on"] or choice["representation"]).split("+"))
    features = reduce_features(
        view_features(views, space, view_means(views)), "pca", n_components=PCA_COMPONENTS, random_state=SEED
    ).coords
    names = [Path(path).parent.name for path in embedding.paths]
    return DefaultRun(
        fixed.scores or {},
        fixed.embeddings.model.model,
        seconds,
        auto.clustering.n_clusters,
        str(choice["representation"]),
        choice["refined_on"],
        features,
        np.unique(names, return_inverse=True)[1],
    )


def probe_accuracy(features: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Cross-validated accuracy of a logistic regression and of a 20-nearest-neighbour vote (cosine)."""
    folds = StratifiedKFold(PROBE_FOLDS, shuffle=True, random_state=SEED)
    logistic = cross_val_score(LogisticRegression(max_iter=2000), features, truth, cv=folds).mean()
    neighbours = cross_val_score(KNeighborsClassifier(PROBE_NEIGHBOURS, metric="cosine"), features, truth, cv=folds)
    return float(logistic), float(neighbours.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="?", default="bench-work/quality", type=Path)
    parser.add_argument("--only", default=",".join(DATA_SETS), help="data sets to run, comma-separated")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(DATA_SETS))
    if unknown:
        parser.error(f"unknown data set {', '.join(unknown)}; choose from {', '.join(DATA_SETS)}")
    print(f"{'data set':<18} {'pipeline':<18} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'time s':>7}  notes")
    for name in names:
        data = DATA_SETS[name](args.work)
        k = len(np.unique(data.truth))
        rows = []
        started = time.perf_counter()
        labels = KMeans(k, n_init=10, random_state=SEED).fit_predict(data.pixels)
        rows.append(("pixels + k-means", clustering_scores(data.truth, labels), time.perf_counter() - started, ""))
        if data.n2d:
            started = time.perf_counter()
            labels = n2d_labels(data.pixels)
            rows.append(("N2D-like", clustering_scores(data.truth, labels), time.perf_counter() - started, ""))
        default = pixclust_runs(data.folder, args.work / f"run-{name}", k)
        started = time.perf_counter()
        probe, neighbours = probe_accuracy(default.features, default.truth)
        probe_seconds = time.perf_counter() - started
        acc = default.scores["acc"]
        notes = (
            f"model {default.model}; features: {default.representation}, refined on {default.refined_on}; "
            f"--k auto chose {default.auto_k}; ACC / probe {acc / probe:.3f}"
        )
        rows.append(("pixclust default", default.scores, default.seconds, notes))
        for pipeline, score, seconds, note in rows:
            print(
                f"{name:<18} {pipeline:<18} {score['acc']:>6.3f} {score['nmi']:>6.3f} {score['ari']:>6.3f} {seconds:>7.1f}  {note}",
                flush=True,
            )
        print(
            f"{name:<18} {'linear probe':<18} {probe:>6.3f} {'':>6} {'':>6} {probe_seconds:>7.1f}  "
            f"accuracy, {PROBE_FOLDS}-fold; {PROBE_NEIGHBOURS}-NN: {neighbours:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
