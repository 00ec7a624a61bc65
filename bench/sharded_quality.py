"""The distributed path on real images against the local one: ``embed-shards`` + ``cluster-shards`` against ``pixclust cluster``.

Run: .venv/bin/python bench/sharded_quality.py [WORK_DIR] [--seeds 0 1 2] [--only NAME,NAME]

Three data sets, written as PNG files under WORK_DIR (default bench-work/sharded-quality,
kept so that a second run reuses them and their embeddings): scikit-learn's digits
(1,797), the same digits in random ink and paper colours (digits-coloured), and 3,000 of
Fashion-MNIST's test images (300 a class). For each, the local default command
(``pixclust cluster FOLDER --k 10``) and, on a Ray instance of this machine's CPUs, the
commands a user types, ``pixclust embed-shards FOLDER --out PARTS`` then ``pixclust
cluster-shards PARTS --out RUN --k 10 --seed S``: as they are, and with ``--no-hog`` (the
embedding alone; for the coloured digits ``--ink off`` instead). Printed: ACC and NMI
against the classes (used only to score), the features the pipeline chose, and the ARI of
the sharded clusters with the local ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from real_data import colour_at_random, fashion_mnist, grey_digits, write_image_tree
from sklearn.metrics import adjusted_rand_score

import pixclust
from pixclust.clustering.metrics import clustering_scores
from pixclust.demo import write_digits

PER_CLASS = 300
K = 10


def data_sets(work: Path) -> dict[str, Path]:
    images, labels = fashion_mnist("test")
    rows = np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(K)])
    fashion = work / "fashion-3000"
    if not fashion.is_dir():
        write_image_tree(fashion, images[rows], labels[rows])
    digits = work / "digits"
    if not digits.is_dir():
        write_digits(digits)
    coloured = work / "digits-coloured"
    if not coloured.is_dir():
        pixels, classes = grey_digits()
        names = tuple(str(digit) for digit in range(K))
        write_image_tree(coloured, colour_at_random(pixels, random_state=0), classes, class_names=names)
    return {"digits": digits, "digits-coloured": coloured, "fashion-3000": fashion}


def pixclust_command(*args: object, address: str) -> None:
    """The installed command, as a user types it, on the bench's Ray instance."""
    command = [sys.executable, "-m", "pixclust", *map(str, args), "--address", address, "--quiet"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def labels_by_path(clusters_csv: Path) -> dict[str, int]:
    with open(clusters_csv, newline="", encoding="utf-8") as stream:
        return {row["path"]: int(row["cluster_id"]) for row in csv.DictReader(stream)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, default=Path("bench-work/sharded-quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", help="comma-separated data sets: digits, digits-coloured, fashion-3000")
    args = parser.parse_args()
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    print(f"| data set | path | seed | features | ACC | NMI | ARI with the local run |\n|{'---|' * 7}")
    chosen = args.only.split(",") if args.only else None
    for name, folder in data_sets(args.work).items():
        if chosen and name not in chosen:
            continue
        local = {
            seed: pixclust.run(
                pixclust.RunConfig(folder, args.work / f"{name}-local", k=K, report=False, seed=seed),
                quiet=True,
            )
            for seed in args.seeds
        }
        paths = local[args.seeds[0]].embeddings.paths
        truth = np.unique([Path(path).parent.name for path in paths], return_inverse=True)[1]
        for seed, result in local.items():
            scores = clustering_scores(truth, result.clustering.labels)
            features = result.clustering.choice["representation"]
            print(f"| {name} | local default | {seed} | {features} | {scores['acc']:.3f} | {scores['nmi']:.3f} | |")
        for option in ("", "--ink off" if name == "digits-coloured" else "--no-hog"):
            parts = args.work / f"{name}-parts{option.replace(' ', '')}"
            pixclust_command("embed-shards", folder, "--out", parts, *option.split(), address=address)
            for seed in args.seeds:
                sharded = args.work / f"{name}-sharded"
                pixclust_command("cluster-shards", parts, "--out", sharded, "--k", K, "--seed", seed, address=address)
                summary = json.loads((sharded / "cluster_table" / "summary.json").read_text(encoding="utf-8"))
                found = labels_by_path(sharded / "clusters.csv")
                labels = np.array([found[path] for path in paths])
                scores = clustering_scores(truth, labels)
                agreement = adjusted_rand_score(local[seed].clustering.labels, labels)
                print(
                    f"| {name} | embed-shards{' ' + option if option else ''} + cluster-shards | {seed} | "
                    f"{summary['choice']['representation']} | {scores['acc']:.3f} | {scores['nmi']:.3f} | "
                    f"{agreement:.3f} |",
                    flush=True,
                )
    ray.shutdown()


if __name__ == "__main__":
    main()
