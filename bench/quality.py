"""Cluster quality without labels: baselines against pixclust's default command, on two data sets.

Run: .venv/bin/python bench/quality.py [WORK_DIR]
Fashion-MNIST's test set (10,000 images, Debian's dataset-fashion-mnist) and
scikit-learn's digits (1,797) are written as PNG files under WORK_DIR (default
bench-work/quality, kept so a second run reuses them and their embeddings).
Rows:
  pixels + k-means     k-means (10 starts) on the raw pixel vectors
  N2D-like             N2D (McConville et al. 2020): an autoencoder on pixels
                       (d-500-500-2000-10), UMAP of its codes to 10-d, GMM
  pixclust default     `pixclust cluster FOLDER --k 10`, the command a user types
and the k that `--k auto` chooses. Labels are used only to score.
"""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from common import fashion_mnist, write_image_tree
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from pixclust.clustering.metrics import clustering_scores
from pixclust.demo import write_digits
from pixclust.runs.pipeline import RunConfig, run

SEED = 0
N_CLASSES = 10


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


def pixclust_runs(folder: Path, out: Path) -> tuple[dict[str, float], float, int, str]:
    """Scores of the default command with --k 10, its time, and the k and features --k auto chooses."""
    started = time.perf_counter()
    fixed = run(RunConfig(source=str(folder), out=str(out), k=N_CLASSES, truth="folders", report=False), quiet=True)
    seconds = time.perf_counter() - started
    auto = run(RunConfig(source=str(folder), out=str(out), k="auto", truth="folders", report=False), quiet=True)
    return fixed.scores or {}, seconds, auto.clustering.n_clusters, str(fixed.clustering.choice["representation"])


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-work/quality")
    fashion_images, fashion_labels = fashion_mnist("test")
    data_sets = {
        "Fashion-MNIST test": (
            write_image_tree(work / "fashion", fashion_images, fashion_labels),
            fashion_images.reshape(len(fashion_images), -1) / 255.0,
            fashion_labels,
        ),
        "digits": (write_digits(work / "digits"), *digits_pixels()),
    }
    print(f"{'data set':<20} {'pipeline':<18} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'time s':>7}  notes")
    for name, (folder, pixels, truth) in data_sets.items():
        rows = []
        started = time.perf_counter()
        labels = KMeans(N_CLASSES, n_init=10, random_state=SEED).fit_predict(pixels)
        rows.append(("pixels + k-means", clustering_scores(truth, labels), time.perf_counter() - started, ""))
        started = time.perf_counter()
        labels = n2d_labels(pixels)
        rows.append(("N2D-like", clustering_scores(truth, labels), time.perf_counter() - started, ""))
        scores, seconds, auto_k, features = pixclust_runs(folder, work / f"run-{folder.name}")
        rows.append(("pixclust default", scores, seconds, f"features: {features}; --k auto chose k = {auto_k}"))
        for pipeline, score, seconds, notes in rows:
            print(
                f"{name:<20} {pipeline:<18} {score['acc']:>6.3f} {score['nmi']:>6.3f} {score['ari']:>6.3f} {seconds:>7.1f}  {notes}",
                flush=True,
            )


if __name__ == "__main__":
    main()
