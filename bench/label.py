"""Labelling by example against the seed's nearest-example rule, when most images belong to no class and when none do.

Run: .venv/bin/python bench/label.py [WORK_DIR]

Three collections are written as images and clustered once with the default
command (``pixclust cluster FOLDER --out RUN``, cached in WORK_DIR), as a user
would before ``pixclust label --in RUN``: 3,000 Fashion-MNIST test images (300
per class), the 1,797 digits, and 800 crops of ten scikit-image photos (the
class is the photo). Labels are used only to score.

1. Majority "none": 1, 2 or 3 classes get 3, 5 or 10 examples each; the other
   classes (70-90% of the images) should be "none". Three random choices of
   the known classes each, 27 settings per collection. Rows: the seed's rule at
   0.70 / 0.75 / 0.80, the seed's rule at its best threshold chosen with the
   answers (an oracle no user has), pixclust's default, and pixclust after one
   round of 20 suggestions answered from the truth. Scores over the known
   classes' images only ("none" alone is easy when it dominates): micro and
   macro F1 and micro precision, on the images that are not examples. Last
   column: how far the expected precision pixclust prints is from the true one
   (mean absolute difference per class).
2. Every image of a class: all ten Fashion-MNIST classes get examples. Macro F1
   of the default (which must find out by itself that nothing is "none"), of
   ``--no-none``, and of ``--method propagate --no-none`` (the labelling
   before clusters were claimed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from real_data import FASHION_CLASSES, PHOTOS, fashion_mnist, write_image_tree, write_photo_crops
from sklearn.metrics import precision_recall_fscore_support

from pixclust.embedding.sources import open_embeddings
from pixclust.labelling.feedback import Feedback
from pixclust.labelling.label import NONE_LABEL, References, label_images, nearest_example_scores, threshold_labels
from pixclust.labelling.structure import Structure, run_structure

KNOWN_CLASSES = (1, 2, 3)
SHOTS = (3, 5, 10)
DRAWS = 3
THRESHOLDS = (0.70, 0.75, 0.80)
ANSWERS = 20


def fashion_folder(root: Path) -> Path:
    images, labels = fashion_mnist("test")
    rng = np.random.default_rng(0)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), 300, replace=False) for c in range(10)])
    return write_image_tree(root, 255 - images[picked], labels[picked], size=(64, 64))


def digits_folder(root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (255 - digits.images * 16).clip(0, 255).astype(np.uint8)
    return write_image_tree(root, pixels, digits.target, size=(64, 64), class_names=tuple(map(str, range(10))))


COLLECTIONS = {
    "Fashion-MNIST": (fashion_folder, FASHION_CLASSES),
    "digits": (digits_folder, tuple(map(str, range(10)))),
    "photo crops": (write_photo_crops, PHOTOS),
}


def clustered(work: Path, name: str) -> tuple[np.ndarray, np.ndarray, Structure, object]:
    """The collection's run (clustered once with the default command), its vectors, truth and structure."""
    write, classes = COLLECTIONS[name]
    slug = name.replace(" ", "-").lower()
    folder, run = work / slug, work / f"run-{slug}"
    if not (run / "clusters.csv").is_file():
        write(folder)
        command = [
            sys.executable,
            "-m",
            "pixclust",
            "cluster",
            str(folder),
            "--out",
            str(run),
            "--no-report",
            "--quiet",
        ]
        subprocess.run(command, check=True)
    embeddings = open_embeddings(run)
    truth = np.array([classes.index(Path(path).parent.name) for path in embeddings.paths])
    structure = run_structure(run, embeddings)
    assert structure is not None, f"{run} holds no clustering"
    return embeddings.vectors, truth, structure, embeddings


def known_scores(expected: np.ndarray, predicted: np.ndarray, n_known: int, mask: np.ndarray) -> np.ndarray:
    """Micro F1, macro F1 and micro precision over the known classes (``none`` left out)."""
    labels = list(range(n_known))
    precision, _, micro, _ = precision_recall_fscore_support(
        expected[mask], predicted[mask], labels=labels, average="micro", zero_division=0
    )
    _, _, macro, _ = precision_recall_fscore_support(
        expected[mask], predicted[mask], labels=labels, average="macro", zero_division=0
    )
    return np.array([micro, macro, precision])


def answers_from_truth(result, expected: np.ndarray) -> Feedback:
    """What a user would answer to each suggestion: the class it is, or that it is of none / not that class."""
    feedback = Feedback()
    for row in result.suggestions:
        truth, now = int(expected[row]), int(result.labels[row])
        if truth != NONE_LABEL:
            feedback.positive.append((row, truth))
        else:
            feedback.negative.append((row, now if now != NONE_LABEL else NONE_LABEL))
    return feedback


def estimate_error(result, expected: np.ndarray, mask: np.ndarray) -> list[float]:
    errors = []
    for c, estimate in enumerate(result.estimates):
        taken = mask & (result.labels == c)
        if taken.any():
            errors.append(abs(estimate.precision - float(np.mean(expected[taken] == c))))
    return errors


def majority_none(name: str, vectors, truth, structure, embeddings) -> None:
    rows: dict[str, list[np.ndarray]] = {}
    errors: dict[str, list[float]] = {}
    for n_known in KNOWN_CLASSES:
        for draw in range(DRAWS):
            rng = np.random.default_rng(100 * n_known + draw)
            kept = tuple(sorted(int(c) for c in rng.choice(truth.max() + 1, n_known, replace=False)))
            expected = np.array([kept.index(t) if t in kept else NONE_LABEL for t in truth])
            for shots in SHOTS:
                examples = np.concatenate([rng.choice(np.flatnonzero(truth == c), shots, replace=False) for c in kept])
                refs = References([str(c) for c in kept], vectors[examples], expected[examples], list(examples))
                mask = np.ones(len(truth), bool)
                mask[examples] = False
                nearest = nearest_example_scores(vectors, refs)
                for threshold in THRESHOLDS:
                    rows.setdefault(f"seed rule >= {threshold:.2f}", []).append(
                        known_scores(expected, threshold_labels(nearest, threshold), n_known, mask)
                    )
                oracle = max(
                    (
                        known_scores(expected, threshold_labels(nearest, t), n_known, mask)
                        for t in np.arange(0.3, 1, 0.005)
                    ),
                    key=lambda scores: scores[0],
                )
                rows.setdefault("seed rule, oracle threshold", []).append(oracle)
                first = label_images(embeddings, refs, structure=structure, suggest=ANSWERS, random_state=draw)
                rows.setdefault("pixclust default", []).append(known_scores(expected, first.labels, n_known, mask))
                errors.setdefault("pixclust default", []).extend(estimate_error(first, expected, mask))
                answered = answers_from_truth(first, expected)
                second = label_images(embeddings, refs, structure=structure, feedback=answered, random_state=draw)
                rule = f"pixclust + {ANSWERS} answers"
                rows.setdefault(rule, []).append(known_scores(expected, second.labels, n_known, mask))
                errors.setdefault(rule, []).extend(estimate_error(second, expected, mask))
    print(f"\n{name}: {len(truth):,} images, {DRAWS * len(KNOWN_CLASSES) * len(SHOTS)} settings averaged")
    print(f"{'rule':<30} {'micro F1':>8} {'macro F1':>8} {'precision':>9} {'|est-true| precision':>21}")
    for rule, values in rows.items():
        micro, macro, precision = np.mean(values, axis=0)
        error = f"{np.mean(errors[rule]):.3f}" if rule in errors else ""
        print(f"{rule:<30} {micro:>8.3f} {macro:>8.3f} {precision:>9.3f} {error:>21}")


def nothing_none(vectors, truth, structure, embeddings) -> None:
    print("\nFashion-MNIST, all ten classes given (no image is 'none'): macro F1 over the classes")
    print(f"{'examples/class':>14} {'pixclust default':>16} {'--no-none':>9} {'propagate --no-none':>19}")
    for shots in SHOTS:
        found = {"default": [], "no-none": [], "propagate": []}
        for draw in range(DRAWS):
            rng = np.random.default_rng(draw)
            examples = np.concatenate([rng.choice(np.flatnonzero(truth == c), shots, replace=False) for c in range(10)])
            refs = References(list(map(str, range(10))), vectors[examples], truth[examples], list(examples))
            mask = np.ones(len(truth), bool)
            mask[examples] = False
            for rule, method, estimate_none in (
                ("default", "clusters", True),
                ("no-none", "clusters", False),
                ("propagate", "propagate", False),
            ):
                result = label_images(
                    embeddings, refs, method=method, structure=structure, estimate_none=estimate_none, random_state=draw
                )
                found[rule].append(known_scores(truth, result.labels, 10, mask)[1])
        print(
            f"{shots:>14} "
            + " ".join(
                f"{np.mean(found[rule]):>{width}.3f}"
                for rule, width in (("default", 16), ("no-none", 9), ("propagate", 19))
            )
        )


def main(work: Path) -> None:
    for name in COLLECTIONS:
        data = clustered(work, name)
        majority_none(name, *data)
        if name == "Fashion-MNIST":
            nothing_none(*data)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/pixclust-bench-label"))
