"""A head on frozen embeddings against ``train --finetune``, on a few hundred labelled Fashion-MNIST images.

Run: .venv/bin/python bench/finetune.py [WORK_DIR] [TRAIN_PER_CLASS] [TEST_PER_CLASS] [INPUT_SIZE]
Images from the test split (64x64 PNGs, 30 per class to train on and 100 per
class to score by default) are embedded once with the default model (cached in
WORK_DIR). Both classifiers train on the same labelled images and are scored on
the same unseen ones; INPUT_SIZE (default: the network's own, 224) is the
fine-tuned network's input side. Prints macro F1, accuracy, training time and
the fine-tuning history.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from common import FASHION_CLASSES, fashion_mnist, write_image_tree

from pixclust.labelling.finetune import FinetuneSettings
from pixclust.labelling.finetune_training import training_device
from pixclust.labelling.workflows import evaluate, train
from pixclust.runs.pipeline import embed
from pixclust.runs.record import RunRecord


def write_split(root: Path, train_per_class: int, test_per_class: int) -> tuple[Path, Path]:
    """<root>/train/<class>/ and <root>/test/<class>/, disjoint images of every class."""
    images, labels = fashion_mnist("test")
    rng = np.random.default_rng(0)
    chosen = {
        c: rng.choice(np.flatnonzero(labels == c), train_per_class + test_per_class, replace=False) for c in range(10)
    }
    train_rows = np.concatenate([rows[:train_per_class] for rows in chosen.values()])
    test_rows = np.concatenate([rows[train_per_class:] for rows in chosen.values()])
    write_image_tree(root / "train", images[train_rows], labels[train_rows], size=(64, 64))
    write_image_tree(root / "test", images[test_rows], labels[test_rows], size=(64, 64))
    return root / "train", root / "test"


def labels_csv(path: Path, folder: Path) -> Path:
    rows = sorted(image for image in folder.rglob("*.png"))
    path.write_text("path,label\n" + "".join(f"{image},{image.parent.name}\n" for image in rows))
    return path


def main(work: Path, train_per_class: int, test_per_class: int, input_size: int | None) -> None:
    images = work / f"images{train_per_class}-{test_per_class}"
    train_folder, test_folder = write_split(images, train_per_class, test_per_class)
    run = work / f"run{train_per_class}-{test_per_class}"
    embeddings = embed(images, out=run, quiet=True)
    RunRecord(model=embeddings.model.to_dict()).write(run / "run.json")
    train_csv, test_csv = labels_csv(work / "train.csv", train_folder), labels_csv(work / "test.csv", test_folder)
    print(
        f"{10 * train_per_class} labelled and {10 * test_per_class} unseen Fashion-MNIST images ({', '.join(FASHION_CLASSES)})"
    )
    print(f"fine-tuning on {training_device()}, input {input_size or 'the network default'}")
    print(f"{'classifier':<28} {'macro F1':>8} {'accuracy':>8} {'train s':>8}")
    for name, options in (
        ("head on frozen embeddings", {}),
        ("--finetune", {"finetune": True, "finetune_settings": FinetuneSettings(input_size=input_size)}),
    ):
        model = work / f"{'finetuned' if options else 'frozen'}.pkl"
        started = time.perf_counter()
        classifier = train(train_csv, run, out=model, quiet=True, **options)
        seconds = time.perf_counter() - started
        scores = evaluate(model, test_csv, source=run).evaluation
        print(f"{name:<28} {scores.macro_f1:>8.3f} {scores.accuracy:>8.3f} {seconds:>8.1f}")
    assert classifier.finetuned is not None
    print(f"\nfine-tuning history (best epoch {classifier.finetuned.best_epoch}; epoch 0 is the linear probe alone):")
    for row in classifier.finetuned.history:
        train_part = (
            ""
            if row["train_loss"] is None
            else f"train loss {row['train_loss']:.3f} accuracy {row['train_accuracy']:.3f}, "
        )
        print(
            f"  epoch {row['epoch']:>2}: {train_part}validation loss {row['validation_loss']:.3f} macro F1 {row['validation_f1']:.3f}"
        )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        Path(arguments[0]) if arguments else Path("/tmp/pixclust-bench"),
        int(arguments[1]) if len(arguments) > 1 else 30,
        int(arguments[2]) if len(arguments) > 2 else 100,
        int(arguments[3]) if len(arguments) > 3 else None,
    )
