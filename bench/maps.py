"""Time the report's t-SNE maps and score them: older settings against pixclust's.

    .venv/bin/python bench/maps.py [--n 10000] [--work /tmp/pixclust-bench-report]
    .venv/bin/python bench/maps.py --run RUN_FOLDER

Without --run, on the run folder bench/report.py makes (the first N Fashion-MNIST test images,
`pixels` model); with it, on any run folder whose images sit in one folder per class (the
70,000 Fashion-MNIST images of `pixclust cluster FOLDER --truth folders`, say). Each map is
scored by the share of each image's 10 nearest neighbours in the map that have its own class
(the folder it is in; above 10,000 images, over a fixed sample of 10,000 of them): a map that
keeps classes together scores high. The older settings are rebuilt here by calling openTSNE
directly, fitted on the same sample pixclust fits (all images up to 10,000) and the rest placed
by openTSNE's `transform`: openTSNE's defaults (up to 10,000 images only: above, they take an
hour), and the 3-D map pixclust fitted from nothing before it went on from the 2-D map. The
3-D map's time is its own: the 2-D map it goes on from is made for the report anyway. Timings
vary with the machine's load; compare figures from one run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import fashion_run

from pixclust.clustering.maps import DEFAULT_FIT_SAMPLE, map_basis, map_coordinates
from pixclust.report.run_view import load_run

NEIGHBOURS = 10
SCORED_ROWS = 10_000
# pixclust's 3-D t-SNE before it went on from the 2-D map: fitted from nothing, with these openTSNE settings.
FROM_NOTHING = {"n_iter": 250, "theta": 0.8}


def neighbour_class_share(coords: np.ndarray, classes: np.ndarray, scored: np.ndarray) -> float:
    """Share of the ``NEIGHBOURS`` nearest other points in ``coords`` of each ``scored`` point that have its class."""
    nearest = NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(coords).kneighbors(coords[scored], return_distance=False)
    return float((classes[nearest[:, 1:]] == classes[scored, None]).mean())


def opentsne_map(basis: np.ndarray, n_components: int, **settings: object) -> np.ndarray:
    """A t-SNE map fitted by openTSNE with ``settings`` on pixclust's fit sample, the rest placed by ``transform``."""
    from openTSNE import TSNE

    fitted = np.arange(len(basis))
    if len(basis) > DEFAULT_FIT_SAMPLE:
        fitted = np.sort(np.random.default_rng(0).choice(len(basis), size=DEFAULT_FIT_SAMPLE, replace=False))
    rest = np.setdiff1d(np.arange(len(basis)), fitted)
    tsne = TSNE(
        n_components=n_components,
        perplexity=float(min(30, (len(fitted) - 1) / 3)),
        negative_gradient_method="auto" if n_components == 2 else "bh",
        n_jobs=-1,
        random_state=0,
        verbose=False,
        **settings,
    )
    coords = np.empty((len(basis), n_components), np.float32)
    embedding = tsne.fit(basis[fitted])
    coords[fitted] = embedding
    if len(rest):
        coords[rest] = embedding.transform(basis[rest])
    return coords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixclust-bench-report"))
    parser.add_argument("--run", type=Path, help="a run folder whose images sit in one folder per class")
    args = parser.parse_args()
    if args.run is None and args.n > DEFAULT_FIT_SAMPLE:
        parser.error(f"--n at most {DEFAULT_FIT_SAMPLE:,}; for more, pass a run folder with --run")

    view = load_run(args.run or fashion_run(args.n, args.work))
    folders = [Path(path).parent.name for path in view.paths]
    classes = np.unique(folders, return_inverse=True)[1]
    scored = np.arange(len(classes))
    if len(scored) > SCORED_ROWS:
        scored = np.sort(np.random.default_rng(1).choice(len(scored), size=SCORED_ROWS, replace=False))
    basis = map_basis(view.vectors)
    few = len(basis) <= DEFAULT_FIT_SAMPLE
    flat_maps: list[np.ndarray] = []

    def pixclusts(dims: int) -> np.ndarray:
        # The 2-D map is made first (the loop's order) and the 3-D map goes on from it, as in the report.
        coords = map_coordinates(basis, "tsne", n_components=dims, flat_map=flat_maps[0] if dims == 3 else None)
        flat_maps.append(coords)
        return coords

    makers: list[tuple[str, str, Callable[[int], np.ndarray], tuple[int, ...]]] = [
        ("PCA", "-", lambda dims: map_coordinates(basis, "pca", n_components=dims), (2, 3)),
        *([("t-SNE", "openTSNE's defaults", lambda dims: opentsne_map(basis, dims), (2, 3))] if few else []),
        (
            "t-SNE",
            "fitted from nothing",
            lambda dims: opentsne_map(basis, dims, **FROM_NOTHING),
            (3,),
        ),
        ("t-SNE", "pixclust's", pixclusts, (2, 3)),
    ]
    print(f"{len(basis):,} images; {len(scored):,} scored")
    print(f"{'map':<10}{'settings':<22}{'seconds':>10}{'10-NN same class':>20}")
    for dims in (2, 3):
        for method, settings, make, dimensions in makers:
            if dims not in dimensions:
                continue
            started = time.perf_counter()
            coords = make(dims)
            seconds = time.perf_counter() - started
            share = neighbour_class_share(coords, classes, scored)
            print(f"{f'{method} {dims}-D':<10}{settings:<22}{seconds:>10.1f}{share:>20.3f}", flush=True)


if __name__ == "__main__":
    main()
