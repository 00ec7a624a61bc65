"""The whole `pixclust cluster` with its report against `pixclust.embed` alone, on all 70,000 Fashion-MNIST images.

    .venv/bin/python bench/pipeline.py [--n 70000] [--work /tmp/pixclust-bench-pipeline]

Writes Fashion-MNIST's train and test images (apt-get install dataset-fashion-mnist)
as 28x28 PNG files in one folder per class, then, each in its own process so that
its time and peak memory are its own, and each from nothing stored:

  embed      pixclust.embed(FOLDER): finding, hashing, decoding and the network
  cluster    pixclust cluster FOLDER --out RUN --k 10 --truth folders: the command
             a user types, with the report

and prints both, the ratio of their times, the command's stages from run.json and
its scores. The machine's load changes figures from hour to hour: compare the two
rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fashion_mnist, write_image_tree

_EMBED = "import sys, pixclust; pixclust.embed(sys.argv[1], quiet=True)"


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident GB) of one child process, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70_000, help="images, test set first (at most 70,000)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixclust-bench-pipeline"))
    args = parser.parse_args()

    test_images, test_labels = fashion_mnist("test")
    train_images, train_labels = fashion_mnist("train")
    images = np.concatenate([test_images, train_images])[: args.n]
    labels = np.concatenate([test_labels, train_labels])[: args.n]
    folder = write_image_tree(args.work / "images", images, labels)
    embed_s, embed_gb = timed([sys.executable, "-c", _EMBED, str(folder)])
    # A new run folder in a scratch folder of this script's own, so that nothing else is ever deleted.
    with tempfile.TemporaryDirectory(prefix="run-", dir=args.work) as scratch:
        run_dir = Path(scratch) / "run"
        command = ["cluster", str(folder), "--out", str(run_dir), "--k", "10", "--truth", "folders", "--quiet"]
        cluster_s, cluster_gb = timed([sys.executable, "-m", "pixclust", *command])
        record = json.loads((run_dir / "run.json").read_text())
    stages = ", ".join(f"{name.removesuffix('_s')} {seconds:.1f} s" for name, seconds in record["timings_s"].items())
    scores = ", ".join(f"{name.upper()} {value:.3f}" for name, value in (record["scores"] or {}).items())
    print(f"{len(images):,} Fashion-MNIST images (28x28 PNG), {os.cpu_count()} cores")
    print(f"{'what':<48}{'seconds':>9}{'peak GB':>9}")
    print(f"{'pixclust.embed(FOLDER)':<48}{embed_s:>9.1f}{embed_gb:>9.2f}")
    print(f"{'pixclust cluster FOLDER --k 10 (with the report)':<48}{cluster_s:>9.1f}{cluster_gb:>9.2f}")
    print(f"whole command / embed alone: {cluster_s / embed_s:.2f}x")
    print(f"stages (run.json): {stages}")
    print(f"scores: {scores}")


if __name__ == "__main__":
    main()
