"""Near-duplicates on real photos: pixclust's duplicate finder against imagededup's hashes, same folder, same run.

Run: .venv/bin/python bench/duplicates.py [WORK_DIR]   (pip install imagededup for its rows)

The folder (real_data.write_duplicate_set, under WORK_DIR, default bench-work/duplicates):
non-overlapping 192 x 192 tiles of scikit-image's sample photos (originals; many
look alike: the Hubble field's stars, the retina's vessels), each with eight
edited copies (half size, JPEG quality 25, 10% cut from each side, +25%
brightness, 3 degrees of rotation, noise, greyscale, gamma 0.7), a recoloured
copy (hue turned half way: a different picture) of each colourful tile, and 300
Fashion-MNIST garments at the same size (look-alikes that no edit made).

A pair of files is a duplicate when both come from one original and neither is
recoloured. Scores are over pairs: pixclust's groups give every pair within a
group; imagededup's answer lists each file's duplicates. Per edit: the share of
copies put with their original. "at its best" picks the hash distance with the
best F1 using the answers, which no user can do; pixclust runs at its defaults.
The machine is shared: compare times within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from real_data import DIFFERENT_EDITS, DUPLICATE_EDITS, write_duplicate_set

import pixclust
from pixclust.curation.duplicates import DuplicateReport, find_duplicates

HASHES = ("PHash", "DHash", "WHash", "AHash")
# imagededup's default Hamming distance for every hash.
IMAGEDEDUP_DEFAULT = 10
EDITS = (*DUPLICATE_EDITS, *DIFFERENT_EDITS)


def true_pairs(files: list) -> set[tuple[str, str]]:
    by_original = defaultdict(list)
    for file in files:
        if file.original:
            by_original[file.original].append(file.path)
    return {tuple(sorted(pair)) for paths in by_original.values() for pair in itertools.combinations(paths, 2)}


def scores(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> tuple[float, float, float]:
    right = len(found & truth)
    precision = right / len(found) if found else 1.0
    recall = right / len(truth)
    return precision, recall, 2 * precision * recall / (precision + recall) if right else 0.0


def per_edit(found: set[tuple[str, str]], files: list) -> dict[str, float]:
    """Share of each edit's copies found with their original (recoloured: kept apart from it)."""
    shares = {}
    for edit in EDITS:
        copies = [file for file in files if file.edit == edit]
        with_original = [
            tuple(sorted((file.path, str(Path(file.path).parent / "original.png")))) in found for file in copies
        ]
        shares[edit] = float(np.mean([not hit for hit in with_original] if edit in DIFFERENT_EDITS else with_original))
    return shares


def pixclust_pairs(folder: Path, run_dir: Path) -> tuple[set[tuple[str, str]], float, float]:
    """The pairs within pixclust's duplicate groups, the time to embed, and the time of the duplicate search."""
    started = time.perf_counter()
    embeddings = pixclust.embed(str(folder), out=str(run_dir), quiet=True)
    embedded = time.perf_counter() - started
    started = time.perf_counter()
    report = find_duplicates(embeddings)
    searched = time.perf_counter() - started
    return grouped_pairs(report, embeddings.paths), embedded, searched


def grouped_pairs(report: DuplicateReport, paths: list[str]) -> set[tuple[str, str]]:
    """Every pair of files that share a duplicate group, each as (smaller path, larger path)."""
    return {
        tuple(sorted((paths[a], paths[b]))) for group in report.groups for a, b in itertools.combinations(group.rows, 2)
    }


def hash_distances(method: str, folder: Path) -> tuple[dict[tuple[str, str], int], float]:
    """Every pair's Hamming distance under one of imagededup's hashes, and the time to hash the folder."""
    from imagededup import methods

    hasher = getattr(methods, method)(verbose=False)
    started = time.perf_counter()
    encodings = hasher.encode_images(image_dir=str(folder), recursive=True)
    seconds = time.perf_counter() - started
    names = sorted(encodings)
    bits = np.array([[int(digit, 16) for digit in encodings[name]] for name in names], dtype=np.uint8)
    unpacked = np.unpackbits(bits[:, :, None], axis=2)[:, :, 4:].reshape(len(names), -1)
    distances = {}
    for row in range(len(names)):
        differing = (unpacked[row + 1 :] != unpacked[row]).sum(axis=1)
        for offset in np.flatnonzero(differing <= 32):
            pair = tuple(sorted((str(folder / names[row]), str(folder / names[row + 1 + offset]))))
            distances[pair] = int(differing[offset])
    return distances, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="?", default="bench-work/duplicates", type=Path)
    args = parser.parse_args()
    folder = args.work / "images"
    files = write_duplicate_set(folder)
    truth = true_pairs(files)
    originals = len({file.original for file in files if file.original})
    print(f"{len(files)} files: {originals} originals, {len(truth)} duplicate pairs\n")
    rows = []
    found, embedded, searched = pixclust_pairs(folder, args.work / "run")
    rows.append(("pixclust (defaults)", found, f"embed {embedded:.1f} s + search {searched:.1f} s"))
    if importlib.util.find_spec("imagededup") is None:
        print("imagededup is not installed (pip install imagededup): its rows are left out\n")
    else:
        for method in HASHES:
            distances, seconds = hash_distances(method, folder)
            default = {pair for pair, distance in distances.items() if distance <= IMAGEDEDUP_DEFAULT}
            rows.append((f"imagededup {method} (default {IMAGEDEDUP_DEFAULT})", default, f"hash {seconds:.1f} s"))
            best = max(range(33), key=lambda cut: scores({p for p, d in distances.items() if d <= cut}, truth)[2])
            at_best = {pair for pair, distance in distances.items() if distance <= best}
            rows.append((f"imagededup {method} (at its best, {best})", at_best, "threshold chosen with the answers"))
    edits_header = " ".join(f"{edit[:11]:>11}" for edit in EDITS)
    print(f"{'tool':<36} {'precision':>9} {'recall':>6} {'F1':>6}  {edits_header}  time")
    for name, pairs, timing in rows:
        precision, recall, f1 = scores(pairs, truth)
        shares = " ".join(f"{share:>11.2f}" for share in per_edit(pairs, files).values())
        print(f"{name:<36} {precision:>9.3f} {recall:>6.3f} {f1:>6.3f}  {shares}  {timing}", flush=True)


if __name__ == "__main__":
    main()
