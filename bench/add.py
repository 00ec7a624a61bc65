"""`pixclust add`: where new images of known kinds go, whether unseen kinds are caught, and what an add costs.

Run: .venv/bin/python bench/add.py [WORK_DIR] [--only quality|cost] [--run-size N]

quality  For Fashion-MNIST's test set and scikit-learn's digits, three pairs of classes
         (drawn with seed 0, the same every time) are held out as unseen. The default
         pipeline clusters 75% of the other eight classes' images at k = 8 (the library's
         `pixclust.cluster`, as `pixclust cluster` does); its model (the same
         `ClusterModel` that `pixclust add` loads) places the other 25% and every image of the
         unseen pair. Printed per data set, averaged over the pairs:
           run ACC      each cluster read as its majority class, on the run's own images
           placed ACC   the same reading for the held-out images of the eight classes
           false alarms held-out images of the eight classes called novel
           caught       images of the unseen classes called novel
         at the default --false-alarms 0.05 and at 0.10.
cost     `pixclust.add` of the last 1,000 Fashion-MNIST training images to a run (with its
         report) of the first --run-size (default 10,000; at most 69,000) of the others, the
         test set first: seconds beyond the embedding of the 1,000 (placing, duplicates
         among them, store, folders, report).
Labels are used only to score. The machine is shared: compare times within one run.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import fashion_mnist, write_image_tree

import pixclust
from pixclust.clustering.adaptive import AdaptiveClusterer
from pixclust.clustering.metrics import NOISE_LABEL
from pixclust.demo import write_digits
from pixclust.runs.pipeline import RunConfig, run

SEED = 0
N_CLASSES = 10
RUN_SHARE = 0.75
ADDED = 1_000
FALSE_ALARMS = (0.05, 0.10)


def unseen_pairs(n_pairs: int = 3) -> list[tuple[int, int]]:
    """Distinct pairs of classes, drawn once with SEED."""
    rng = np.random.default_rng(SEED)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n_pairs:
        pair = tuple(sorted(int(label) for label in rng.choice(N_CLASSES, 2, replace=False)))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def embedded(folder: Path, work: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The embedding and HOG views of every image under ``folder`` (stored under ``work``), and each one's class."""
    embeddings = pixclust.embed(folder, out=work / "store")
    hog = pixclust.embed(folder, model="hog", out=work / "store" / "hog")
    assert hog.paths == embeddings.paths
    labels = np.array([int(Path(path).parent.name.split("-")[0]) for path in embeddings.paths])
    return {"embedding": embeddings.vectors, "hog": hog.vectors}, labels


def majority_accuracy(clusters: np.ndarray, truth: np.ndarray, reading: dict[int, int]) -> float:
    predicted = np.array([reading.get(int(cluster), NOISE_LABEL) for cluster in clusters])
    return float(np.mean(predicted == truth))


def quality_rows(name: str, views: dict[str, np.ndarray], labels: np.ndarray) -> list[str]:
    scores = []
    for pair in unseen_pairs():
        rng = np.random.default_rng(SEED)
        seen = np.flatnonzero(~np.isin(labels, pair))
        rng.shuffle(seen)
        in_run = np.sort(seen[: int(RUN_SHARE * len(seen))])
        held_out = np.sort(seen[int(RUN_SHARE * len(seen)) :])
        unseen = np.flatnonzero(np.isin(labels, pair))
        clusterer = AdaptiveClusterer(k=N_CLASSES - 2, random_state=SEED).fit(
            {view: vectors[in_run] for view, vectors in views.items()}
        )
        clusters, model = clusterer.labels_, clusterer.model_
        reading = {
            int(cluster): int(np.bincount(labels[in_run][clusters == cluster]).argmax())
            for cluster in np.unique(clusters)
        }
        row = [majority_accuracy(clusters, labels[in_run], reading)]
        for false_alarms in FALSE_ALARMS:
            placed = model.place(
                {view: vectors[held_out] for view, vectors in views.items()}, false_alarms=false_alarms
            )
            novel = model.place({view: vectors[unseen] for view, vectors in views.items()}, false_alarms=false_alarms)
            if false_alarms == FALSE_ALARMS[0]:
                row.append(majority_accuracy(placed.labels, labels[held_out], reading))
            row += [float(placed.novel.mean()), float(novel.novel.mean())]
        scores.append(row)
        print(f"  {name} unseen {pair}: " + "  ".join(f"{value:.3f}" for value in row), flush=True)
    mean = np.mean(scores, axis=0)
    pairs = " ".join(f"{a}+{b}" for a, b in unseen_pairs())
    return [f"| {name} (unseen {pairs}) | " + " | ".join(f"{value:.3f}" for value in mean) + " |"]


def cost_row(work: Path, run_size: int) -> str:
    test_images, test_labels = fashion_mnist("test")
    train_images, train_labels = fashion_mnist("train")
    # The run takes the test set, then the training set; the images added are the training set's last.
    images = np.concatenate([test_images, train_images[:-ADDED]])
    labels = np.concatenate([test_labels, train_labels[:-ADDED]])
    run_size = min(run_size, len(images))
    source = write_image_tree(work / f"cost-run-{run_size}-images", images[:run_size], labels[:run_size])
    new = write_image_tree(work / "cost-new", train_images[-ADDED:], train_labels[-ADDED:])
    clustered = work / f"cost-run-{run_size}"
    run(RunConfig(source=source, out=clustered, k=10), quiet=True)
    # Added to a copy, so the bench can run again on the same clustered run.
    run_dir = work / f"cost-run-{run_size}-added"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(clustered, run_dir, symlinks=True)
    started = time.perf_counter()
    result = pixclust.add(run_dir, [new], quiet=True)
    total = time.perf_counter() - started
    steps = ", ".join(f"{name[:-2]} {value:.1f}" for name, value in result.timings.items())
    return (
        f"| {run_size:,} + {len(result.paths):,} | {result.timings['embed_s']:.1f} | {total - result.timings['embed_s']:.1f} "
        f"| {result.n_novel:,} | {steps} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="?", default="bench-work/add", type=Path)
    parser.add_argument("--only", choices=("quality", "cost"))
    parser.add_argument("--run-size", type=int, default=10_000)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "quality"):
        images, labels = fashion_mnist("test")
        fashion = write_image_tree(args.work / "fashion", images, labels, class_names=tuple(map(str, range(10))))
        digits = write_digits(args.work / "digits")
        table = [
            "| data set | run ACC | placed ACC | false alarms 5% | caught 5% | false alarms 10% | caught 10% |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, folder in (("Fashion-MNIST", fashion), ("digits", digits)):
            views, truth = embedded(folder, args.work / f"{name}-views")
            table += quality_rows(name, views, truth)
        print("\n".join(table))
    if args.only in (None, "cost"):
        print("| images | embedding the new (s) | everything else (s) | novel | steps (s) |\n|---|---|---|---|---|")
        print(cost_row(args.work, args.run_size))


if __name__ == "__main__":
    main()
