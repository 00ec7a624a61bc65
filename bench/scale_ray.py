"""Sharded clustering on Ray at 1,000,000 and 10,000,000 x 256 synthetic embeddings: time, memory, agreement.

Run: .venv/bin/python bench/scale_ray.py [--rows 1000000 --rows 10000000] [--dim 256] [--pipeline auto] [--data DIR]
     .venv/bin/python bench/scale_ray.py --case DIR K PIPELINE OUT   (one case, in this process)

The embeddings (bench/scale.py's blobs: 1,000 random centres, L2-normalised)
are written once to DIR/<rows>x<dim> as Parquet shards of 100,000 rows with a
``truth`` column, and kept for the next run (10,000,000 x 256 floats are
10.3 GB on disk). Each case runs ``pixclust.cluster_shards`` in its own
process on a Ray instance of this machine's CPUs that it starts itself, and
prints: seconds, seconds per million rows, the driver's peak resident memory
(ru_maxrss), the peak of all processes together (the driver and every Ray
process under it, summed by PSS so that memory two processes share counts
once, read every half second from /proc; Linux only), clusters made, and ARI
against the blobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scale import blob_chunks

DIM = 256
SHARD_ROWS = 100_000
K = 1000
_POLL_S = 0.5


def write_shards(folder: Path, n: int, dim: int = DIM) -> Path:
    """DIR/<n>x<dim>: shards of path, vector and truth rows; made once, then reused (a ``done`` file marks it whole)."""
    data = folder / f"{n}x{dim}"
    if (data / "done").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    start = 0
    for index, (vectors, truth) in enumerate(blob_chunks(n, dim, chunk=SHARD_ROWS)):
        table = pa.table(
            {
                "path": [f"images/{row:09d}.jpg" for row in range(start, start + len(truth))],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                "truth": truth.astype(np.int32),
            }
        )
        # Uncompressed: random floats do not compress, and the bench should not time a codec.
        pq.write_table(table, data / f"shard-{index:05d}.parquet", compression="none", row_group_size=8192)
        start += len(truth)
    (data / "done").write_text(f"{n}\n")
    return data


class ProcessTreeMemory:
    """The largest sum of PSS over this process and all its descendants, sampled every ``_POLL_S`` seconds."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(_POLL_S):
            self.peak_bytes = max(self.peak_bytes, sum(_pss(pid) for pid in _tree(os.getpid())))


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_case(data: Path, k: str, pipeline: str, out: Path) -> dict[str, object]:
    import ray
    from sklearn.metrics import adjusted_rand_score

    import pixclust

    ray.init(num_cpus=os.cpu_count(), object_store_memory=2**30, include_dashboard=False, log_to_driver=False)
    try:
        with ProcessTreeMemory() as memory:
            started = time.perf_counter()
            run = pixclust.cluster_shards(
                data, out, k=int(k) if k.isdigit() else k, pipeline=pipeline, random_state=0, quiet=True
            )
            seconds = time.perf_counter() - started
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    finally:
        ray.shutdown()
    shards = sorted(str(file) for file in data.glob("*.parquet"))
    truth = pq.read_table(shards, columns=["truth"]).column("truth").to_numpy()
    parts = [str(out / "cluster_table" / name) for name in run.summary["parts"]]
    labels = pq.read_table(parts, columns=["cluster_id"]).column("cluster_id").to_numpy()
    n = int(run.summary["rows"])
    return {
        "rows": n,
        "k": k,
        "pipeline": pipeline,
        "clusters": run.n_clusters,
        "seconds": round(seconds, 1),
        "per_million": round(seconds / (n / 1e6), 1),
        "driver_gb": round(driver_peak / 2**30, 2),
        "all_gb": round(memory.peak_bytes / 2**30, 2),
        "ari": round(float(adjusted_rand_score(truth, labels)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="repeat [default: 1000000 and 10000000]")
    parser.add_argument("--dim", type=int, default=DIM, help=f"numbers per vector [default: {DIM}]")
    parser.add_argument("--pipeline", action="append", choices=("fixed", "auto"), help="repeat [default: auto]")
    parser.add_argument("--data", type=Path, default=Path("/tmp/pixclust-scale-ray"))
    parser.add_argument("--case", nargs=4, metavar=("DIR", "K", "PIPELINE", "OUT"))
    args = parser.parse_args()
    if args.case:
        data, k, pipeline, out = args.case
        print(json.dumps(run_case(Path(data), k, pipeline, Path(out))))
        return
    header = f"{'rows':>11} {'dim':>5} {'--k':>5} {'pipeline':>8} {'clusters':>8} {'seconds':>8} {'s/million':>9} "
    print(header + f"{'driver GiB':>10} {'all GiB':>8} {'ARI':>6}", flush=True)
    for n in args.rows or (1_000_000, 10_000_000):
        data = write_shards(args.data, n, args.dim)
        for pipeline in args.pipeline or ("auto",):
            out = args.data / f"run-{n}x{args.dim}-{pipeline}"
            done = subprocess.run(
                [sys.executable, __file__, "--case", str(data), str(K), pipeline, str(out)],
                check=False,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(
                    f"{n:>11,} {args.dim:>5} {K:>5} {pipeline:>8} failed: {done.stderr.strip().splitlines()[-1:]}",
                    flush=True,
                )
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{n:>11,} {args.dim:>5} {K:>5} {pipeline:>8} {row['clusters']:>8} {row['seconds']:>8} {row['per_million']:>9} "
                f"{row['driver_gb']:>10} {row['all_gb']:>8} {row['ari']:>6}",
                flush=True,
            )


if __name__ == "__main__":
    main()
