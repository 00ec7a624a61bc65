"""The seed's nearest-example rule against pixclust's labelling, on Fashion-MNIST with "none" classes.

Run: .venv/bin/python bench/label.py [WORK_DIR] [PER_CLASS]
300 test-set images per class (3,000) are written as 64x64 PNGs and embedded
once with the default model (cached in WORK_DIR). Five classes get a few
example images each; the other five are left out, so half the images should
be labelled "none" (A); then all ten classes get examples and nothing should
be "none" (B). Scores are macro precision, recall and F1 over the classes (and
"none" in A), on the images that are not examples, averaged over seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from real_data import FASHION_CLASSES, fashion_mnist
from sklearn.metrics import precision_recall_fscore_support

from pixclust.labelling.label import ExampleLabeller, References, nearest_example_scores, threshold_labels
from pixclust.runs.pipeline import embed

KEPT = (0, 1, 2, 5, 8)
SHOTS = (3, 5, 10)
SEEDS = range(5)
THRESHOLDS = (0.70, 0.75, 0.80)


def write_fashion_tree(root: Path, per_class: int) -> Path:
    """``per_class`` test-set images of each class as <root>/<class>/<n>.png, dark on white, 64x64."""
    from PIL import Image

    images, labels = fashion_mnist("test")
    rng = np.random.default_rng(0)
    for c in range(10):
        folder = root / FASHION_CLASSES[c]
        folder.mkdir(parents=True, exist_ok=True)
        for index in rng.choice(np.flatnonzero(labels == c), per_class, replace=False):
            target = folder / f"{index:05d}.png"
            if not target.exists():
                Image.fromarray(255 - images[index]).resize((64, 64), Image.Resampling.BICUBIC).convert("RGB").save(
                    target
                )
    return root


def scores(truth: np.ndarray, predicted: np.ndarray, labels: list[int], mask: np.ndarray) -> np.ndarray:
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth[mask], predicted[mask], labels=labels, average="macro", zero_division=0
    )
    return np.array([precision, recall, f1])


def compare(vectors: np.ndarray, truth: np.ndarray, kept: tuple[int, ...]) -> None:
    """Print precision/recall/F1 of each rule, averaged over SEEDS, for each number of examples per class."""
    expected = np.array([kept.index(t) if t in kept else -1 for t in truth])
    has_none = bool(np.any(expected == -1))
    # Macro over the classes, and over "none" when some images truly are none.
    labels = list(range(-1 if has_none else 0, len(kept)))
    print(f"{'examples/class':>14} {'rule':<30} {'precision':>9} {'recall':>7} {'F1':>6}")
    for shots in SHOTS:
        results: dict[str, list[np.ndarray]] = {}
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            examples = np.concatenate([rng.choice(np.flatnonzero(truth == c), shots, replace=False) for c in kept])
            refs = References([FASHION_CLASSES[c] for c in kept], vectors[examples], expected[examples], list(examples))
            mask = np.ones(len(truth), bool)
            mask[examples] = False
            nearest = nearest_example_scores(vectors, refs)
            for threshold in THRESHOLDS:
                results.setdefault(f"nearest example >= {threshold:.2f}", []).append(
                    scores(expected, threshold_labels(nearest, threshold), labels, mask)
                )
            for estimate_none in (True, False):
                labeller = ExampleLabeller(estimate_none=estimate_none, random_state=seed).fit(vectors, refs)
                rule = "pixclust propagate" + ("" if estimate_none else " --no-none")
                results.setdefault(rule, []).append(scores(expected, labeller.labels_, labels, mask))
        for rule, values in results.items():
            precision, recall, f1 = np.mean(values, axis=0)
            print(f"{shots:>14} {rule:<30} {precision:>9.3f} {recall:>7.3f} {f1:>6.3f}")


def main(work: Path, per_class: int) -> None:
    embeddings = embed(
        write_fashion_tree(work / f"images{per_class}", per_class), out=work / f"run{per_class}", quiet=True
    )
    truth = np.array([FASHION_CLASSES.index(Path(path).parent.name) for path in embeddings.paths])
    print(f"{len(embeddings):,} Fashion-MNIST images, {len(SEEDS)} random draws of examples per row.")
    print(
        f"\nA. Examples of {', '.join(FASHION_CLASSES[c] for c in KEPT)}; the other five classes (half the images) should be 'none'."
    )
    compare(embeddings.vectors, truth, KEPT)
    print("\nB. Examples of all ten classes; no image should be 'none'.")
    compare(embeddings.vectors, truth, tuple(range(10)))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        Path(arguments[0]) if arguments else Path("/tmp/pixclust-bench"),
        int(arguments[1]) if len(arguments) > 1 else 300,
    )
