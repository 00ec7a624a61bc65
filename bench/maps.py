"""Time the report's t-SNE maps and score them: openTSNE's default settings against pixclust's.

    .venv/bin/python bench/maps.py [--n 10000] [--work /tmp/pixclust-bench-report]

On the run folder bench/report.py makes (Fashion-MNIST test images, `pixels` model), each map
is scored by the share of each image's 10 nearest neighbours in the map that have its own
Fashion-MNIST class (the class folder it was written to): a map that keeps classes together
scores high. The old settings are rebuilt here by calling openTSNE directly, fitted on all
images as pixclust does up to its fit sample of 10,000. Timings vary with the machine's
load; compare figures from one run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FASHION_CLASSES
from report import fashion_run

from pixclust.clustering.maps import DEFAULT_FIT_SAMPLE, map_basis, map_coordinates
from pixclust.report.run_view import load_run

NEIGHBOURS = 10


def neighbour_class_share(coords: np.ndarray, classes: np.ndarray) -> float:
    """Share of each point's ``NEIGHBOURS`` nearest other points in ``coords`` that have its class."""
    nearest = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(coords).kneighbors(coords, return_distance=False)
    return float((classes[nearest[:, 1:]] == classes[:, None]).mean())


def opentsne_defaults(basis: np.ndarray, n_components: int) -> np.ndarray:
    """The t-SNE map as pixclust made it before: openTSNE's default iterations and Barnes-Hut theta."""
    from openTSNE import TSNE

    tsne = TSNE(
        n_components=n_components,
        perplexity=float(min(30, (len(basis) - 1) / 3)),
        negative_gradient_method="auto" if n_components == 2 else "bh",
        n_jobs=-1,
        random_state=0,
        verbose=False,
    )
    return np.asarray(tsne.fit(basis))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixclust-bench-report"))
    args = parser.parse_args()
    if args.n > DEFAULT_FIT_SAMPLE:
        parser.error(f"--n at most {DEFAULT_FIT_SAMPLE:,}: above it both settings place images into a fitted sample")

    view = load_run(fashion_run(args.n, args.work))
    classes = np.array([FASHION_CLASSES.index(Path(path).parent.name) for path in view.paths])
    basis = map_basis(view.vectors)
    maps = (
        ("PCA", "-", lambda dims: map_coordinates(basis, "pca", n_components=dims)),
        ("t-SNE", "openTSNE's defaults", lambda dims: opentsne_defaults(basis, dims)),
        ("t-SNE", "pixclust's", lambda dims: map_coordinates(basis, "tsne", n_components=dims)),
    )
    print(f"{'map':<10}{'settings':<22}{'seconds':>10}{'10-NN same class':>20}")
    for dims in (2, 3):
        for method, settings, make in maps:
            started = time.perf_counter()
            coords = make(dims)
            seconds = time.perf_counter() - started
            share = neighbour_class_share(coords, classes)
            print(f"{f'{method} {dims}-D':<10}{settings:<22}{seconds:>10.1f}{share:>20.3f}", flush=True)


if __name__ == "__main__":
    main()
