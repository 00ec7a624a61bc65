"""``embed``: every usable image under a folder as one vector, reusing what a run folder has stored.

Discover the files, hash their bytes (taken from the store when path, size
and mtime are unchanged), extract only the hashes the store lacks, save
shards as they are made (so an interrupted call resumes), and assemble the
result in file order. Kept apart from :mod:`pixclust.runs.pipeline` so that
embedding imports neither scikit-learn nor matplotlib: a second of start-up
that a user who only embeds would otherwise wait for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import FrameType

import numpy as np

from pixclust.embedding.decode import DEFAULT_MAX_PIXELS
from pixclust.embedding.discover import Discovery, discover_images
from pixclust.embedding.embedder import DEFAULT_BATCH_SIZE, Embedder
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S, check_engine
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.models import DEFAULT_MODEL
from pixclust.embedding.pixel_stats import unmeasured
from pixclust.embedding.store import EmbeddingStore, KnownEmbeddings, StoredVector, file_digest
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.progress import progress_bar, quietly

FLUSH_EVERY = 1024
_HASH_THREADS = 4


def embed(
    source: str | Path | Sequence[str | Path],
    *,
    model: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    include_hidden: bool = False,
    runtime: str = "auto",
    precision: str = "auto",
    quiet: bool = False,
    engine: str = "local",
    address: str | None = None,
    actor_cpus: int | None = None,
    ray_wait: float | None = None,
    save: bool = True,
) -> Embeddings:
    """Embed every usable image under ``source`` (a folder or an image file, or several of them).

    With ``out`` (a run folder), vectors already stored there for the same
    bytes and the same model are reused, new ones are saved as they are made
    (so an interrupted call resumes), and ``embeddings.parquet`` is written
    at the end. Files that cannot be used are listed in ``Embeddings.skipped``;
    the result may be empty, and callers decide whether that is an error.
    ``engine="ray"`` has the images not found in the store embedded by Ray
    actors (on the cluster at ``address``, each of ``actor_cpus`` CPUs, giving
    up after ``ray_wait`` seconds without one; see ``engines.ray.RaySettings``).
    ``save=False`` keeps ``embeddings.parquet`` as it is (new vectors stay in
    their shards): for a caller that saves these rows together with others.
    """
    with quietly(quiet), contextlib.ExitStack() as ray_connection:
        check_engine(engine, address, num_workers, actor_cpus=actor_cpus, ray_wait=ray_wait)
        if engine == "ray":
            from pixclust.embedding.engines.ray import ray_session

            # One connection for hashing and embedding, closed (and a Ray started here stopped) on the way out.
            ray_connection.enter_context(ray_session(address))
        wait_s = None if engine != "ray" else DEFAULT_RAY_WAIT_S if ray_wait is None else ray_wait
        discovery = discover_sources(source, include_hidden, wait_s)
        extractor = load_extractor(model, weights=weights, runtime=runtime, precision=precision, lazy=True)
        require_memory_for(len(discovery.files), extractor.dim)
        store = EmbeddingStore(out) if out is not None else None
        known = store.known(extractor.model_id, extractor.dim) if store else KnownEmbeddings()

        files, hashes, stats, skipped = hash_files([str(p) for p in discovery.files], known, wait_s)
        skipped = list(discovery.skipped) + skipped
        first_path_of_hash = {}
        for path, digest in zip(files, hashes, strict=True):
            if digest not in known.row_of_hash:
                first_path_of_hash.setdefault(digest, path)
        to_extract = list(first_path_of_hash.items())
        stat_of = dict(zip(files, stats, strict=True))

        if engine == "ray":
            from pixclust.embedding.engines.ray import RayEmbedder, RaySettings

            embedder: Embedder = RayEmbedder(
                extractor,
                model=model,
                weights=weights,
                runtime=runtime,
                precision=precision,
                batch_size=batch_size,
                max_pixels=max_pixels,
                settings=RaySettings(address, actor_cpus, DEFAULT_RAY_WAIT_S if ray_wait is None else ray_wait),
            )
        else:
            embedder = Embedder(extractor, batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels)
        fresh, failed = _extract(embedder, to_extract, store, stat_of, extractor.model_id, extractor.dim)

        kept = []
        for path, digest in zip(files, hashes, strict=True):
            if digest in failed:
                reason = failed[digest]
                skipped.append(SkippedFile(path, reason.reason, reason.detail))
            else:
                kept.append((path, digest))
        digests = [digest for _, digest in kept]
        n_extracted = len(fresh)
        if digests and digests == known.content_hashes:
            # Nothing new and nothing gone (the usual re-run): the store's own array is the answer, not a copy of it.
            vectors, image_sizes, image_stats = known.vectors, known.image_sizes, known.image_stats
        else:
            vectors, image_sizes, image_stats = _gather(
                digests, _releasing_vector_of(fresh, known, digests), extractor.dim
            )
        embeddings = _assemble(kept, stat_of, extractor.model_id, vectors, image_sizes, image_stats)
        embeddings.model = replace(extractor.record, model_id=extractor.model_id)
        embeddings.skipped = sorted(skipped, key=lambda item: item.path)
        embeddings.n_extracted = n_extracted
        # Every image used is one or the other: a copy of a file embedded now counts as reused, as in embed-shards.
        embeddings.n_reused = len(digests) - n_extracted
        if store and save and not store.holds(embeddings):
            store.save(embeddings)
        return embeddings


def require_memory_for(n_images: int, dim: int) -> None:
    """Refuse, before any image is embedded, a call whose vectors alone cannot fit in this machine's memory.

    ``embed`` returns every vector in one array; past the memory the process would
    thrash or be killed after hours of embedding, where the sharded commands hold
    one part at a time. Clustering needs several times the vectors (docs/SCALE.md).
    """
    needed, available = n_images * dim * np.dtype(np.float32).itemsize, memory_bytes()
    if available is not None and needed > available:
        raise UsageError(
            f"{n_images:,} images of {dim:,} numbers are {needed / 2**30:.1f} GiB of vectors, more than this "
            f"machine's {available / 2**30:.1f} GiB of memory; embed them into parts with 'pixclust embed-shards "
            "SOURCE --out DIR' and cluster them with 'pixclust cluster-shards DIR' (Ray; see docs/SCALE.md)"
        )


# A container's memory limit: cgroup v2, then v1 (where "no limit" reads as a number beyond any machine).
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_bytes() -> int | None:
    """The memory this process may use: the machine's, or its control group's limit where lower; None if unknown."""
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    for file in _CGROUP_LIMITS:
        try:
            with open(file, encoding="ascii") as stream:
                limit = stream.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            available = min(available, int(limit))
    return available


def discover_sources(
    source: str | Path | Sequence[str | Path], include_hidden: bool, ray_wait: float | None = None
) -> Discovery:
    """The images under one root, or under several (each path once, in the order the roots are given).

    With ``ray_wait`` (``--engine ray``, Ray connected) the files' first bytes are read by Ray tasks.
    """
    roots = [source] if isinstance(source, (str, Path)) else list(source)
    examine = None
    if ray_wait is not None:
        from pixclust.embedding.engines.ray import examine_on_ray

        examine = functools.partial(examine_on_ray, wait_s=ray_wait)
    found = [discover_images(os.path.abspath(root), include_hidden=include_hidden, examine=examine) for root in roots]
    if len(found) == 1:
        return found[0]
    files = list(dict.fromkeys(path for discovery in found for path in discovery.files))
    skipped = list({item.path: item for discovery in found for item in discovery.skipped}.values())
    return Discovery(files, skipped)


def _extract(
    embedder: Embedder,
    to_extract: Sequence[tuple[str, str]],
    store: EmbeddingStore | None,
    stat_of: dict[str, tuple[int, int]],
    model_id: str,
    dim: int,
) -> tuple[dict[str, StoredVector], dict[str, SkippedFile]]:
    """Vectors by content hash for the ``(hash, path)`` pairs, and why the others failed; shards saved on the way."""
    fresh: dict[str, StoredVector] = {}

    def keep_and_save(chunk: Embeddings) -> None:
        for row, digest in enumerate(chunk.content_hashes):
            width, height = (int(v) for v in chunk.image_sizes[row])
            fresh[digest] = StoredVector(chunk.vectors[row], width, height, chunk.image_stats[row])
        if store:
            store.save_partial(chunk.to_table())

    failed = extract_chunks(embedder, to_extract, stat_of, model_id, dim, keep_and_save)
    return fresh, failed


def extract_chunks(
    embedder: Embedder,
    to_extract: Sequence[tuple[str, str]],
    stat_of: dict[str, tuple[int, int]],
    model_id: str,
    dim: int,
    save_chunk: Callable[[Embeddings], None],
    chunk_rows: int | None = None,
) -> dict[str, SkippedFile]:
    """Embed the ``(hash, path)`` pairs, handing ``save_chunk`` the rows made once ``chunk_rows`` (default
    :data:`FLUSH_EVERY`) are in hand; why the others failed, by hash.

    Only a chunk's vectors are held here. The first Ctrl-C stops after the batch in hand, whose rows are saved
    before the ``KeyboardInterrupt`` is raised.
    """
    chunk_rows = FLUSH_EVERY if chunk_rows is None else chunk_rows
    failed: dict[str, SkippedFile] = {}
    pending: dict[str, tuple[str, StoredVector]] = {}

    def flush() -> None:
        if pending:
            digests = list(pending)
            chunk = _gather(digests, lambda digest: pending[digest][1], dim)
            save_chunk(_assemble([(pending[digest][0], digest) for digest in digests], stat_of, model_id, *chunk))
        pending.clear()

    try:
        with (
            _ctrl_c_after_batch() as stop_requested,
            progress_bar("embedding", len(to_extract)) as advance,
            # closing() shuts the decode workers down here, not whenever the generator is collected.
            contextlib.closing(embedder.iter_batches([path for _, path in to_extract])) as batches,
        ):
            for batch in batches:
                for row, index in enumerate(batch.indices):
                    digest, path = to_extract[index]
                    width, height = (int(v) for v in batch.image_sizes[row])
                    pending[digest] = (path, StoredVector(batch.vectors[row], width, height, batch.image_stats[row]))
                for index, error in batch.failures:
                    digest, path = to_extract[index]
                    failed[digest] = SkippedFile(path, error.reason, error.detail)
                advance(len(batch.indices) + len(batch.failures))
                if len(pending) >= chunk_rows:
                    flush()
                if stop_requested.is_set():
                    break
    finally:
        flush()
    return failed


@contextlib.contextmanager
def _ctrl_c_after_batch() -> Iterator[threading.Event]:
    """Make the first Ctrl-C a request to stop after the batch in hand (whose vectors are then saved).

    The caller checks the event between batches and leaves its loop; on the
    way out of this block the request becomes a ``KeyboardInterrupt``, so it
    also holds when it came after the last batch. A second Ctrl-C interrupts at
    once. A process forked meanwhile inherits the handler, which does nothing
    there (decode workers ignore Ctrl-C anyway: a terminal sends it to every
    process in the group, and this process shuts them down). Only the main
    thread may set handlers; elsewhere Ctrl-C keeps its usual meaning.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    owner = os.getpid()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            return
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if requested.is_set():
        raise KeyboardInterrupt


def hash_files(
    paths: Sequence[str], known: KnownEmbeddings, ray_wait: float | None = None
) -> tuple[list[str], list[str], list[tuple[int, int]], list[SkippedFile]]:
    """Content hash per file, taken from the store when path, size and mtime are unchanged.

    Files are read by a few threads here, or, with ``ray_wait`` (``--engine ray``, Ray connected), by Ray
    tasks on the cluster's nodes, which read the shared storage side by side.
    """
    files, hashes, stats, skipped = [], [], [], []
    with progress_bar("hashing", len(paths), unit="files") as advance:
        if ray_wait is None:
            with ThreadPoolExecutor(_HASH_THREADS) as pool:
                results = zip(paths, pool.map(lambda path: file_digest(path, known.hash_by_stat), paths), strict=True)
                for path, result in results:
                    _keep(path, result, files, hashes, stats, skipped)
                    advance(1)
        else:
            from pixclust.embedding.engines.ray import hash_on_ray

            # Batches come back as they finish; the rows keep the order of discovery.
            result_of = {}
            for batch in hash_on_ray(paths, known.hash_by_stat, ray_wait):
                result_of.update(batch)
                advance(len(batch))
            for path in paths:
                _keep(path, result_of[path], files, hashes, stats, skipped)
    return files, hashes, stats, skipped


def _keep(
    path: str,
    result: tuple[str, tuple[int, int]] | SkippedFile,
    files: list[str],
    hashes: list[str],
    stats: list[tuple[int, int]],
    skipped: list[SkippedFile],
) -> None:
    if isinstance(result, SkippedFile):
        skipped.append(result)
    else:
        files.append(path)
        hashes.append(result[0])
        stats.append(result[1])


def _gather(
    digests: Sequence[str], vector_of: Callable[[str], StoredVector], dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors (N x dim float32), (width, height) and pixel stats of ``digests``, in order, filled into arrays made once."""
    vectors = np.empty((len(digests), dim), dtype=np.float32)
    image_sizes = np.empty((len(digests), 2), dtype=np.int32)
    image_stats = unmeasured(len(digests))
    for row, digest in enumerate(digests):
        stored = vector_of(digest)
        vectors[row] = stored.vector
        image_sizes[row] = stored.width, stored.height
        image_stats[row] = stored.stats
    return vectors, image_sizes, image_stats


def _releasing_vector_of(
    fresh: dict[str, StoredVector], known: KnownEmbeddings, digests: Sequence[str]
) -> Callable[[str], StoredVector]:
    """``_gather``'s lookup of each of ``digests``, in that order, that takes each fresh vector out of ``fresh``
    at its last use.

    A fresh vector is a row of the chunk it was saved in, and holds that whole chunk. Taken out as the
    final array fills (``digests`` come in the order the files were embedded), each chunk is let go once
    its rows are copied, rather than every chunk being held beside the final array: 70,000 images' HOG view
    peaked at 2.25 GB with both, 0.99 GB each, and 1.30 GB without (docs/PERFORMANCE.md).
    """
    uses_left = Counter(digests)

    def vector_of(digest: str) -> StoredVector:
        if digest not in fresh:
            return known.vector_of(digest)
        uses_left[digest] -= 1
        return fresh.pop(digest) if uses_left[digest] == 0 else fresh[digest]

    return vector_of


def _assemble(
    rows: Sequence[tuple[str, str]],
    stat_of: dict[str, tuple[int, int]],
    model_id: str,
    vectors: np.ndarray,
    image_sizes: np.ndarray,
    image_stats: np.ndarray,
) -> Embeddings:
    """Embeddings of the ``(path, hash)`` rows, whose vectors, image sizes and pixel stats are given in the same order."""
    return Embeddings(
        paths=[path for path, _ in rows],
        vectors=vectors,
        content_hashes=[digest for _, digest in rows],
        file_sizes=np.array([stat_of[path][0] for path, _ in rows], dtype=np.int64),
        mtimes_ns=np.array([stat_of[path][1] for path, _ in rows], dtype=np.int64),
        image_sizes=image_sizes,
        model_id=model_id,
        image_stats=image_stats,
    )
