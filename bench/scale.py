"""Time and peak memory of clustering at size: 1,000,000 x 256 and 200,000 x 1280 synthetic embeddings.

Run: .venv/bin/python bench/scale.py [--pipeline fixed] [--pipeline auto]
     .venv/bin/python bench/scale.py --case N DIM K PIPELINE   (one case, in this process)

Each case runs ``pixclust.cluster`` in its own process, so that its peak
resident memory (ru_maxrss) is its own: by default with ``pipeline="fixed"``
(L2, PCA, k-means on a sample by faiss above 50,000 rows, per-image
distances and sampled silhouettes, the 2-D map); ``--pipeline auto``
measures the adaptive pipeline as well. The peak includes the input vectors
(N x DIM float32: 0.95 GiB for both sizes). The embeddings are Gaussian
blobs around 1,000 random centres, L2-normalised; ARI against those blobs is
printed as a sanity check, not as a quality claim (real embeddings are not
blobs). Similar and duplicates at 200,000 x 1280 are measured by
bench/search.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

CASES = ((1_000_000, 256), (200_000, 1280))
KS = ("1000", "auto")
N_CENTRES = 1000
# Noise per dimension; with unit-variance centres a blob's spread stays below the distance between centres.
NOISE = 0.5
_CHUNK = 100_000


def blob_chunks(n: int, dim: int, *, seed: int = 0, chunk: int = _CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(L2-normalised rows x DIM float32 vectors, blob of each), CHUNK rows at a time, N rows in all."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        truth = rng.integers(0, N_CENTRES, min(chunk, n - start))
        rows = centres[truth] + NOISE * rng.standard_normal((len(truth), dim), dtype=np.float32)
        yield rows / np.linalg.norm(rows, axis=1, keepdims=True), truth


def synthetic_embeddings(n: int, dim: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised N x DIM float32 vectors, blob of each), made chunk by chunk to keep the peak at one copy."""
    vectors = np.empty((n, dim), dtype=np.float32)
    truth = np.empty(n, dtype=np.int64)
    start = 0
    for rows, blobs in blob_chunks(n, dim, seed=seed):
        vectors[start : start + len(rows)], truth[start : start + len(rows)] = rows, blobs
        start += len(rows)
    return vectors, truth


def run_case(n: int, dim: int, k: str, pipeline: str) -> dict[str, object]:
    from sklearn.metrics import adjusted_rand_score

    import pixclust

    vectors, truth = synthetic_embeddings(n, dim)
    started = time.perf_counter()
    result = pixclust.cluster(vectors, k=int(k) if k.isdigit() else k, pipeline=pipeline, random_state=0)
    seconds = time.perf_counter() - started
    return {
        "n": n,
        "dim": dim,
        "k": k,
        "pipeline": pipeline,
        "clusters": result.n_clusters,
        "seconds": round(seconds, 1),
        "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "ari": round(float(adjusted_rand_score(truth, result.labels)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline", action="append", choices=("fixed", "auto"), help="repeat for both [default: fixed]"
    )
    parser.add_argument("--case", nargs=4, metavar=("N", "DIM", "K", "PIPELINE"))
    args = parser.parse_args()
    if args.case:
        n, dim, k, pipeline = args.case
        print(json.dumps(run_case(int(n), int(dim), k, pipeline)))
        return
    print(
        f"{'images':>10} {'dim':>5} {'--k':>5} {'pipeline':>8} {'clusters':>8} "
        f"{'seconds':>8} {'peak GiB':>8} {'ARI':>6}"
    )
    for n, dim in CASES:
        for k in KS:
            for pipeline in args.pipeline or ("fixed",):
                done = subprocess.run(
                    [sys.executable, __file__, "--case", str(n), str(dim), k, pipeline],
                    check=False,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    print(
                        f"{n:>10,} {dim:>5} {k:>5} {pipeline:>8} failed: {done.stderr.strip().splitlines()[-1:]}",
                        flush=True,
                    )
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{n:>10,} {dim:>5} {k:>5} {pipeline:>8} {row['clusters']:>8} "
                    f"{row['seconds']:>8} {row['peak_gb']:>8} {row['ari']:>6}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
