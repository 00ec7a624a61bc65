"""``pixclust embed-shards`` against ``--engine ray``'s assembled store: the driver's memory as the images grow.

Run: .venv/bin/python bench/embed_shards.py [--images 10000 --images 40000] [--data DIR] [--model NAME]
         [--engine store --engine parts]

Fashion-MNIST's images (training set, then test set) are written as PNG files once
(DIR/fashion-<n>, one folder per class). Each case runs in its own process on a Ray
instance of this machine's CPUs, with ``--model`` (default: the default model; ``hog``
embeds an image in milliseconds, so that the driver's own bookkeeping can be measured at
larger sizes in minutes): ``store`` is ``pixclust.embed(folder, out=..., engine="ray")``
(the vectors assembled in the pixclust process and written as one ``embeddings.parquet``),
``parts`` is ``pixclust.embed_shards(folder, out)``; ``again`` is the same call once more
with nothing new. Printed: seconds, images a second, the pixclust process's peak resident
memory (ru_maxrss), and, per 10,000 images, how much that peak grew from the smallest size
to the largest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from real_data import fashion_mnist, write_image_tree

from pixclust.embedding.models import DEFAULT_MODEL

WIDTHS = {"images": 7, "engine": 6, "call": 5, "seconds": 8, "per_s": 9, "driver": 11}


def write_images(folder: Path, n: int) -> Path:
    root = folder / f"fashion-{n}"
    if not (root / "done").is_file():
        train, test = fashion_mnist("train"), fashion_mnist("test")
        images, labels = np.concatenate([train[0], test[0]]), np.concatenate([train[1], test[1]])
        write_image_tree(root, images[:n], labels[:n])
        (root / "done").write_text(f"{n}\n")
    return root


def run_case(images: Path, out: Path, engine: str, model: str) -> dict[str, object]:
    import ray

    import pixclust

    ray.init(num_cpus=os.cpu_count(), object_store_memory=2**30, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        if engine == "parts":
            rows = pixclust.embed_shards(images, out, model=model, quiet=True).rows
        else:
            rows = len(pixclust.embed(images, out=out, model=model, engine="ray", quiet=True))
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    return {
        "rows": rows,
        "seconds": round(seconds, 1),
        "per_s": round(rows / seconds, 1),
        "driver_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, action="append", help="repeat [default: 10000 and 40000]")
    parser.add_argument("--data", type=Path, default=Path("/tmp/pixclust-embed-shards"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--engine", choices=("store", "parts"), action="append", help="repeat [default: both]")
    parser.add_argument("--case", nargs=4, metavar=("IMAGES", "OUT", "ENGINE", "MODEL"))
    args = parser.parse_args()
    if args.case:
        images, out, engine, model = args.case
        print(json.dumps(run_case(Path(images), Path(out), engine, model)))
        return
    print(" ".join(f"{name:>{width}}" for name, width in WIDTHS.items()), flush=True)
    sizes = sorted(args.images or (10_000, 40_000))
    peaks: dict[tuple[str, str], dict[int, float]] = {}
    for n in sizes:
        images = write_images(args.data, n)
        for engine in args.engine or ("store", "parts"):
            out = args.data / f"run-{engine}-{args.model}-{n}"
            # The bench's own folder from an earlier invocation: "first" must start from nothing.
            shutil.rmtree(out, ignore_errors=True)
            for call in ("first", "again"):
                done = subprocess.run(
                    [sys.executable, __file__, "--case", str(images), str(out), engine, args.model],
                    check=False,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    print(f"{n:>7,} {engine:>6} {call:>5} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                peaks.setdefault((engine, call), {})[n] = row["driver_gb"]
                print(
                    f"{n:>7,} {engine:>6} {call:>5} {row['seconds']:>8} {row['per_s']:>9} {row['driver_gb']:>11}",
                    flush=True,
                )
    if len(sizes) > 1:
        for (engine, call), peak in peaks.items():
            if sizes[0] in peak and sizes[-1] in peak:
                growth = (peak[sizes[-1]] - peak[sizes[0]]) / ((sizes[-1] - sizes[0]) / 10_000)
                print(f"driver peak growth, {engine} {call}: {growth * 1024:.0f} MiB per 10,000 images")


if __name__ == "__main__":
    main()
