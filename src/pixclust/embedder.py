"""Batched feature extraction: decode in worker processes while the model runs.

Each worker reads, decodes (``images.load_rgb``) and transforms one batch of
files at a time; the main process stacks them and runs the network. A file
that cannot be decoded comes back as a failure with its reason and never
stops the stream. At most two batches per worker wait decoded, never the
whole folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixclust.errors import DecodeError, PixclustError, UsageError
from pixclust.images import DEFAULT_MAX_PIXELS, REASON_DECODE_FAILED, full_size, load_rgb
from pixclust.models import FeatureExtractor

DEFAULT_BATCH_SIZE = 32


@dataclass
class ExtractedBatch:
    """Vectors for some of the input paths; ``indices`` are positions in that input list."""

    indices: np.ndarray
    vectors: np.ndarray
    image_sizes: np.ndarray
    failures: list[tuple[int, DecodeError]]


class DecodedFiles:
    """Map-style dataset: index -> (index, transformed array or None, (w, h), error or None)."""

    def __init__(
        self, paths: Sequence[str], transform: Callable[[Any], np.ndarray], draft_size: int, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.draft_size = draft_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, tuple[int, int], DecodeError | None]:
        try:
            image = load_rgb(self.paths[index], max_pixels=self.max_pixels, draft_size=self.draft_size)
            return index, self.transform(image), full_size(image), None
        except DecodeError as error:
            return index, None, (0, 0), error
        except Exception as error:  # a transform failing on one odd image must not end the run
            return index, None, (0, 0), DecodeError(REASON_DECODE_FAILED, f"{type(error).__name__}: {error}")


# Each decode worker's own files, set once when it starts, so that a task is just a range of indices.
_worker_files: DecodedFiles | None = None


def _start_decode_worker(files: DecodedFiles) -> None:
    global _worker_files
    _worker_files = files
    # Ctrl-C reaches every process in the terminal's group; the parent decides what it means and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_range(start: int, stop: int) -> list[Any]:
    assert _worker_files is not None, "decode worker started without its files"
    return _decoded(_worker_files, start, stop)


def _decoded(files: DecodedFiles, start: int, stop: int) -> list[Any]:
    return [files[index] for index in range(start, min(stop, len(files)))]


def decoded_batches(files: DecodedFiles, *, batch_size: int, num_workers: int | None = None) -> Iterator[list[Any]]:
    """Lists of ``DecodedFiles`` items in input order, decoded in worker processes when there are enough files.

    A process pool of the standard library rather than torch's DataLoader: the
    ONNX runtimes then embed a folder without importing torch (a second of
    start-up). A worker that dies (killed for memory) ends the stream with one
    error; the vectors already yielded are the caller's to keep.
    At most two batches per worker are decoded ahead of the network.
    """
    workers = default_num_workers(len(files), batch_size) if num_workers is None else num_workers
    starts = range(0, len(files), batch_size)
    if workers == 0:
        for start in starts:
            yield _decoded(files, start, start + batch_size)
        return
    pool = ProcessPoolExecutor(workers, initializer=_start_decode_worker, initargs=(files,))
    try:
        in_flight: deque[Future[list[Any]]] = deque()
        for start in starts:
            in_flight.append(pool.submit(_decode_range, start, start + batch_size))
            if len(in_flight) >= 2 * workers:
                yield _result(in_flight.popleft())
        while in_flight:
            yield _result(in_flight.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(batch: Future[list[Any]]) -> list[Any]:
    try:
        return batch.result()
    except BrokenProcessPool:
        raise PixclustError(
            "an image decoding worker was killed (out of memory?); run again with fewer --workers "
            "(0 decodes in this process) or a lower --max-pixels"
        ) from None


def default_num_workers(n_files: int, batch_size: int) -> int:
    """Decode workers: one per core, none for a handful of files (process start costs more)."""
    if n_files <= 2 * batch_size:
        return 0
    return max(1, min(8, os.cpu_count() or 1))


class Embedder:
    """Turns a list of image paths into vectors with one loaded :class:`FeatureExtractor`."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size} must be at least 1")
        if num_workers is not None and num_workers < 0:
            raise UsageError(f"--workers {num_workers} must be 0 (decode in this process) or more")
        self.extractor = extractor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def iter_batches(self, paths: Sequence[str]) -> Iterator[ExtractedBatch]:
        """Yield results batch by batch, in input order."""
        files = DecodedFiles(paths, self.extractor.transform, self.extractor.draft_size, self.max_pixels)
        # closing(): when our caller closes us midway, the workers stop now, not at garbage collection.
        with contextlib.closing(decoded_batches(files, batch_size=self.batch_size, num_workers=self.num_workers)) as batches:
            for items in batches:
                yield self._embed_items(items)

    def _embed_items(self, items: list[Any]) -> ExtractedBatch:
        decoded = [(index, array, size) for index, array, size, error in items if error is None]
        failures = [(index, error) for index, _, _, error in items if error is not None]
        if decoded:
            vectors = self.extractor.embed_batch(np.stack([array for _, array, _ in decoded]))
        else:
            vectors = np.empty((0, self.extractor.dim), np.float32)
        return ExtractedBatch(
            indices=np.array([index for index, _, _ in decoded], dtype=np.int64),
            vectors=vectors,
            image_sizes=np.array([size for _, _, size in decoded], dtype=np.int32).reshape(-1, 2),
            failures=failures,
        )
