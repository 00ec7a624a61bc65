"""The duplicate search at 100,000 images: time and memory of the whole search, verification included.

Run: .venv/bin/python bench/duplicates_scale.py [WORK_DIR] [--images 100000]

The folder (under WORK_DIR, default bench-work/duplicates-scale) holds the
photo set of bench/duplicates.py (scikit-image photo tiles, eight edited copies
each, recoloured copies; no garments), then Fashion-MNIST's 70,000 garments
drawn at 84 x 84 (three times their size, as small product pictures often
are), then as many of them again as are needed to reach --images, turned a
quarter and given random colours (look-alikes of the upright ones that no
everyday edit makes). The images are embedded once into WORK_DIR/run and the
vectors reused on later runs; only the duplicate search is timed, as
``find_duplicates`` runs it for ``pixclust duplicates RUN``: candidates, every
signature, every candidate pair verified in worker processes, groups.

Memory is the largest sum, over the process and its workers, of their
proportional set sizes (a page shared by n processes counts 1/n in each),
read from /proc every 0.2 s. Precision and recall are
over the photo set's pairs, whose answers are known; among the garments the
table counts the images put in groups (Fashion-MNIST holds a few true copies
of its own). The machine is shared: compare times within one run.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
from duplicates import grouped_pairs, per_edit, scores, true_pairs
from real_data import FASHION_DIR, colour_at_random, fashion_mnist, write_duplicate_set, write_image_tree

import pixclust
from pixclust.curation.duplicates import find_duplicates

GARMENT_SIDE = 84
TARGET_S = 300
TARGET_GB = 4.0


def write_scale_set(root: Path, images: int) -> list:
    """The photo set, the upright garments and the turned, coloured ones, up to ``images`` files in all."""
    files = write_duplicate_set(root / "photos", distractors=0)
    train, train_labels = fashion_mnist("train")
    test, test_labels = fashion_mnist("test")
    garments, labels = np.concatenate([train, test]), np.concatenate([train_labels, test_labels])
    upright = min(len(garments), max(0, images - len(files)))
    size = (GARMENT_SIDE, GARMENT_SIDE)
    write_image_tree(root / "garments", garments[:upright], labels[:upright], size=size)
    turned = max(0, images - len(files) - upright)
    if turned:
        quarter = np.rot90(garments[:turned], axes=(1, 2))
        write_image_tree(root / "garments-turned", colour_at_random(quarter), labels[:turned], size=size)
    return files


class PeakMemory:
    """The largest sum of memory over this process and its descendants (proportional set sizes), sampled."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.peak_bytes = 0
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = sum(_proportional_bytes(pid) for pid in _tree(os.getpid()))
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self._every_s)


def _tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as stream:
                    queue.extend(int(child) for child in stream.read().split())
        except OSError:
            continue
    return pids


def _proportional_bytes(pid: int) -> int:
    """The process's proportional set size: its private memory plus its share of pages it shares."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as stream:
            for line in stream:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="?", default="bench-work/duplicates-scale", type=Path)
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    if not FASHION_DIR.is_dir():
        raise SystemExit(f"needs Fashion-MNIST in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    folder = args.work / "images"
    started = time.perf_counter()
    files = write_scale_set(folder, args.images)
    print(f"folder: {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    embeddings = pixclust.embed(str(folder), out=str(args.work / "run"))
    print(
        f"embeddings: {len(embeddings):,} images, {embeddings.n_extracted:,} embedded now "
        f"({time.perf_counter() - started:.0f} s; not part of the search)",
        flush=True,
    )

    with PeakMemory() as memory:
        started = time.perf_counter()
        report = find_duplicates(embeddings)
        searched = time.perf_counter() - started
    paths = embeddings.paths
    found = grouped_pairs(report, paths)
    photos = str(folder / "photos") + os.sep
    precision, recall, f1 = scores({pair for pair in found if pair[0].startswith(photos)}, true_pairs(files))
    garments = sum(len(group.rows) for group in report.groups if not paths[group.rows[0]].startswith(photos))
    shares = per_edit(found, files)
    print()
    print("| images | candidate pairs | verified | groups | garments in groups | search s | peak GB (all processes) |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(embeddings):,} | {report.candidates:,} | {report.verified:,} | {len(report.groups):,} | "
        f"{garments:,} | {searched:.0f} (target {TARGET_S}) | {memory.peak_bytes / 2**30:.2f} (target {TARGET_GB:.0f}) |"
    )
    print(f"\nphoto set: precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f}")
    print("per edit: " + ", ".join(f"{edit} {share:.2f}" for edit, share in shares.items()))


if __name__ == "__main__":
    main()
