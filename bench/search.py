"""Time and memory of `duplicates` and `similar` on 200,000 random unit vectors of dimension 1280.

Run: .venv/bin/python bench/search.py [N] [DIM]
1,000 near-copies (cosine about 0.95 to their original) are planted so that
recall can be read beside the timings. Memory is the process's peak resident
size (ru_maxrss), reported before and after each step; the vectors alone take
N x DIM x 4 bytes.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from pixclust.curation.duplicates import find_duplicates
from pixclust.curation.search import similar
from pixclust.embeddings import Embeddings
from pixclust.index import VectorIndex

PLANTED = 1000


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def main(n: int = 200_000, dim: int = 1280) -> None:
    rng = np.random.default_rng(0)
    vectors = unit_vectors(n, dim, rng)
    originals = rng.choice(n - PLANTED, PLANTED, replace=False)
    noise = unit_vectors(PLANTED, dim, rng)
    vectors[n - PLANTED :] = 0.95 * vectors[originals] + np.sqrt(1 - 0.95**2) * noise
    embeddings = Embeddings(
        paths=[f"v{i}" for i in range(n)],
        vectors=vectors,
        content_hashes=[""] * n,
        file_sizes=np.zeros(n, np.int64),
        mtimes_ns=np.zeros(n, np.int64),
        image_sizes=np.zeros((n, 2), np.int32),
        model_id="random",
    )
    print(f"{n:,} x {dim} float32 vectors: {vectors.nbytes / 2**30:.2f} GiB; peak RSS so far {peak_gb():.2f} GiB")

    started = time.perf_counter()
    index = VectorIndex(vectors)
    kind = "exact" if index.exact else f"IVF, {index.index.nlist} cells"
    print(f"index ({kind}): {time.perf_counter() - started:.1f} s, peak RSS {peak_gb():.2f} GiB")

    started = time.perf_counter()
    report = find_duplicates(embeddings, threshold=0.9, verify_files=False, index=index)
    elapsed = time.perf_counter() - started
    planted = {(int(a), n - PLANTED + i) for i, a in enumerate(originals)}
    found = {tuple(sorted(g.rows)) for g in report.groups if len(g.rows) == 2}
    print(
        f"duplicates at 0.90: {elapsed:.1f} s ({n / elapsed:,.0f} vectors/s), {len(report.groups)} groups, "
        f"planted pairs found {len(found & planted)}/{PLANTED}, peak RSS {peak_gb():.2f} GiB"
    )

    queries = vectors[rng.choice(n, 1000, replace=False)]
    started = time.perf_counter()
    similar(embeddings, queries, top=10, index=index)
    elapsed = time.perf_counter() - started
    print(f"similar, 1,000 queries, top 10: {elapsed:.2f} s ({elapsed:.2f} ms per query), peak RSS {peak_gb():.2f} GiB")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
