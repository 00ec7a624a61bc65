"""Duplicates among 1,000,000+ x 256 embeddings on Ray (``pixclust duplicates-shards``) against the local finder.

Run: .venv/bin/python bench/duplicates_ray.py [--rows 1000000 --rows 3000000] [--dim 256] [--local] [--data DIR]

The embeddings are bench/scale.py's blobs (1,000 random centres, L2-normalised;
two rows of one blob reach cosine 0.88), written once to DIR/<rows>x<dim>-copies
as Parquet shards of 100,000 rows. In each shard, 100 rows are exact copies and
1,000 near copies (cosine 0.97-0.99) of originals drawn from this shard and the
ones before, so copies sit in other parts than their originals. The vectors name
no files, so a pair is a duplicate by its cosine (``--threshold 0.95``, exact
after the index's estimate). Each case runs in its own process on a Ray instance
of this machine's CPUs and prints: seconds, seconds per million rows, the
driver's peak resident memory, the peak of all processes (PSS, as
bench/scale_ray.py measures it), the share of planted pairs found in one group
(recall), the share of groups holding only one original and its copies
(purity), and the seconds of each pass. ``--local`` adds the local finder
(``find_duplicates`` on every vector in one process) for the smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scale import blob_chunks
from scale_ray import ProcessTreeMemory

DIM = 256
SHARD_ROWS = 100_000
EXACT_COPIES = 100
NEAR_COPIES = 1_000
# Originals of each shard that later shards may copy.
POOL_PER_SHARD = 2_000
THRESHOLD = 0.95


def write_copies(folder: Path, n: int, dim: int) -> Path:
    """DIR/<n>x<dim>-copies: shards of path, vector and ``copy_of`` (the original's row, -1 for an original)."""
    data = folder / f"{n}x{dim}-copies"
    if (data / "done").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    pool_rows: list[np.ndarray] = []
    pool_vectors: list[np.ndarray] = []
    start = 0
    for index, (vectors, _) in enumerate(blob_chunks(n, dim, chunk=SHARD_ROWS)):
        rows = len(vectors)
        copy_of = np.full(rows, -1, dtype=np.int64)
        copies = min(EXACT_COPIES + NEAR_COPIES, rows // 10)
        first_copy = rows - copies
        pool_rows.append(np.arange(start, start + min(POOL_PER_SHARD, first_copy)))
        pool_vectors.append(vectors[: len(pool_rows[-1])])
        every_row, every_vector = np.concatenate(pool_rows), np.concatenate(pool_vectors)
        chosen = rng.integers(0, len(every_row), copies)
        copy_of[first_copy:] = every_row[chosen]
        planted = every_vector[chosen].copy()
        near = planted[min(EXACT_COPIES, copies) :]
        near += rng.uniform(0.012, 0.016, (len(near), 1)).astype(np.float32) * rng.standard_normal(near.shape).astype(
            np.float32
        )
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        vectors[first_copy:] = planted
        table = pa.table(
            {
                "path": [f"images/{row:09d}.jpg" for row in range(start, start + rows)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                "copy_of": copy_of,
            }
        )
        pq.write_table(table, data / f"shard-{index:05d}.parquet", compression="none", row_group_size=8192)
        start += rows
    (data / "done").write_text(f"{n}\n")
    return data


def run_case(data: Path, out: Path, local: bool) -> dict[str, object]:
    import pixclust

    if local:
        from pixclust.curation.duplicates import find_duplicates
        from pixclust.embeddings import Embeddings

        table = pq.read_table(sorted(data.glob("*.parquet")), columns=["path", "vector"])
        n = table.num_rows
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(n, -1)
        zeros = np.zeros(n, dtype=np.int64)
        paths = table.column("path").to_pylist()
        embeddings = Embeddings(paths, vectors, [""] * n, zeros, zeros, np.zeros((n, 2), np.int64), "bench")
        with ProcessTreeMemory() as memory:
            started = time.perf_counter()
            report = find_duplicates(embeddings, threshold=THRESHOLD)
            seconds = time.perf_counter() - started
        groups = [[paths[row] for row in group.rows] for group in report.groups]
        timings: dict[str, float] = {}
    else:
        import ray

        ray.init(num_cpus=os.cpu_count(), object_store_memory=2**30, include_dashboard=False, log_to_driver=False)
        try:
            with ProcessTreeMemory() as memory:
                started = time.perf_counter()
                found = pixclust.duplicates_shards(data, out, threshold=THRESHOLD, quiet=True)
                seconds = time.perf_counter() - started
        finally:
            ray.shutdown()
        groups = [[found.rows.paths[row] for row in group.rows] for group in found.report.groups]
        timings = {name: round(value, 1) for name, value in found.timings.items()}
    copy_of = pq.read_table(sorted(data.glob("*.parquet")), columns=["copy_of"]).column("copy_of").to_numpy()
    n = len(copy_of)
    recall, purity = _scores(copy_of, groups)
    return {
        "rows": n,
        "finder": "local" if local else "ray",
        "seconds": round(seconds, 1),
        "per_million": round(seconds / (n / 1e6), 1),
        "driver_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 2),
        "all_gb": round(memory.peak_bytes / 2**30, 2),
        "groups": len(groups),
        "recall": round(recall, 4),
        "purity": round(purity, 4),
        "timings": timings,
    }


def _scores(copy_of: np.ndarray, groups: list[list[str]]) -> tuple[float, float]:
    """Planted pairs found in one group, and groups holding one original and its copies only."""
    group_of = {int(path[7:16]): number for number, paths in enumerate(groups) for path in paths}
    copies = np.flatnonzero(copy_of >= 0)
    found = sum(1 for row in copies.tolist() if group_of.get(row, -1) == group_of.get(int(copy_of[row]), -2))
    roots = [
        {int(copy_of[row]) if copy_of[row] >= 0 else row for row in (int(p[7:16]) for p in paths)} for paths in groups
    ]
    pure = sum(1 for root in roots if len(root) == 1)
    return found / max(len(copies), 1), pure / max(len(groups), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="repeat [default: 1000000 and 3000000]")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--local", action="store_true", help="also time the local finder at the smallest size")
    parser.add_argument("--data", type=Path, default=Path("/tmp/pixclust-scale-ray"))
    parser.add_argument("--case", nargs=3, metavar=("DIR", "OUT", "FINDER"))
    args = parser.parse_args()
    if args.case:
        data, out, finder = args.case
        print(json.dumps(run_case(Path(data), Path(out), finder == "local")))
        return
    print(
        f"{'rows':>11} {'finder':>6} {'seconds':>8} {'s/million':>9} {'driver GiB':>10} {'all GiB':>8} "
        f"{'groups':>7} {'recall':>7} {'purity':>7}",
        flush=True,
    )
    sizes = sorted(args.rows or (1_000_000, 3_000_000))
    for n in sizes:
        data = write_copies(args.data, n, args.dim)
        for finder in ("local", "ray") if args.local and n == sizes[0] else ("ray",):
            out = args.data / f"duplicates-{n}x{args.dim}"
            done = subprocess.run(
                [sys.executable, __file__, "--case", str(data), str(out), finder],
                check=False,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"{n:>11,} {finder:>6} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{n:>11,} {finder:>6} {row['seconds']:>8} {row['per_million']:>9} {row['driver_gb']:>10} "
                f"{row['all_gb']:>8} {row['groups']:>7} {row['recall']:>7} {row['purity']:>7}",
                flush=True,
            )
            if row["timings"]:
                print(f"{'':>11} passes (s): {row['timings']}", flush=True)


if __name__ == "__main__":
    main()
