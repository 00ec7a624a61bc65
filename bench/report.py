"""Time building the report of a 10,000-image run and print the HTML size.

    .venv/bin/python bench/report.py [--n 10000] [--work /tmp/pixclust-bench-report]

Uses the Fashion-MNIST test set (apt-get install dataset-fashion-mnist) written as
PNG files, embedded with the `pixels` model so the embedding step stays short:
what is timed is the report (maps, thumbnails, plots, HTML), which does not depend on
the model. Timings vary with the machine's load; compare figures from one run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fashion_mnist, peak_memory_gb, write_image_tree

import pixclust
from pixclust.report.build import build_report
from pixclust.report.thumbnails import THUMBNAILS_FILE
from pixclust.runs.folder import DUPLICATES_FILE, MAPS_FILE
from pixclust.runs.pipeline import RunConfig


def fashion_run(n: int, work: Path) -> Path:
    """A run folder (pixels model, k=10, no report) of the first ``n`` Fashion-MNIST test images, in class folders."""
    images, labels = fashion_mnist("test")
    root = write_image_tree(work / "images", images[:n], labels[:n])
    run_dir = work / "run"
    pixclust.run(RunConfig(source=str(root), out=str(run_dir), model="pixels", k=10, report=False), quiet=True)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixclust-bench-report"))
    args = parser.parse_args()

    run_dir = fashion_run(args.n, args.work)
    # A run folder left by an earlier call keeps its caches; the first build must make all of them.
    for cached in (MAPS_FILE, THUMBNAILS_FILE, DUPLICATES_FILE):
        (run_dir / cached).unlink(missing_ok=True)

    started = time.perf_counter()
    report = build_report(run_dir, maps=["pca", "tsne"], quiet=True)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    build_report(run_dir, maps=["pca", "tsne"], quiet=True)
    warm = time.perf_counter() - started

    print(f"images                     {args.n:>10,}")
    print(f"report, first build        {cold:>10.1f} s   (maps PCA + t-SNE 2-D/3-D, thumbnails, plots, HTML)")
    print(f"report, rebuild            {warm:>10.1f} s   (maps and thumbnails from the run folder's cache)")
    print(f"report.html size           {report.stat().st_size / 1e6:>10.1f} MB")
    print(f"peak memory                {peak_memory_gb():>10.2f} GB")


if __name__ == "__main__":
    main()
