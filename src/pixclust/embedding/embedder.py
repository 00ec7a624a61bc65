"""Batched feature extraction: decode in worker processes while the model runs.

Each worker reads, decodes (``decode.load_rgb``) and transforms one batch of
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

from pixclust.embedding.decode import DEFAULT_MAX_PIXELS, full_size, load_rgb
from pixclust.embedding.extractor import FeatureExtractor
from pixclust.embedding.files import REASON_DECODE_FAILED
from pixclust.embedding.pixel_stats import IMAGE_STATS, measure
from pixclust.errors import DecodeError, PixclustError, UsageError
from pixclust.workers import exit_with_parent, worker_context

DEFAULT_BATCH_SIZE = 32
MAX_DEFAULT_WORKERS = 8


@dataclass
class ExtractedBatch:
    """Vectors for some of the input paths; ``indices`` are positions in that input list.

    ``image_stats`` are each image's :data:`~pixclust.embedding.pixel_stats.IMAGE_STATS`.
    """

    indices: np.ndarray
    vectors: np.ndarray
    image_sizes: np.ndarray
    image_stats: np.ndarray
    failures: list[tuple[int, DecodeError]]


@dataclass(frozen=True)
class DecodedItem:
    """One file from a decode worker: its network input, full (width, height) and pixel stats, or why it failed."""

    index: int
    array: np.ndarray | None
    size: tuple[int, int] = (0, 0)
    stats: np.ndarray | None = None
    error: DecodeError | None = None


@dataclass(frozen=True)
class ImageDecoder:
    """How a file becomes network input; all that a decode worker holds, the file names coming with each task.

    ``measure_pixels``: also measure each picture's pixel stats (``pixel_stats.measure``).
    ``seed``: for a transform that draws random numbers (training augmentation),
    which must then have ``reseed(seed_sequence)``. Each batch reseeds it from
    ``seed`` and the batch's first index, so what a batch gets depends on
    neither the worker that decodes it nor the number of workers.
    """

    transform: Callable[[Any], np.ndarray]
    draft_size: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int | None = None
    measure_pixels: bool = False

    def decode(self, index: int, path: str) -> DecodedItem:
        try:
            image = load_rgb(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            return DecodedItem(
                index, self.transform(image), full_size(image), measure(image) if self.measure_pixels else None
            )
        except DecodeError as error:
            return DecodedItem(index, None, error=error)
        except Exception as error:  # a transform failing on one odd image must not end the run
            return DecodedItem(index, None, error=DecodeError(REASON_DECODE_FAILED, f"{type(error).__name__}: {error}"))

    def decode_batch(self, start: int, paths: Sequence[str]) -> list[DecodedItem]:
        """Items for ``paths``, which sit at ``start``, ``start`` + 1, ... in the input."""
        if self.seed is not None:
            self.transform.reseed(np.random.SeedSequence([self.seed, start]))  # type: ignore[attr-defined]
        return [self.decode(start + offset, path) for offset, path in enumerate(paths)]


# Each decode worker's decoder, set once when it starts; the file names come with each task, so a
# worker that is not forked (macOS, Windows) never gets a copy of a million paths.
_worker_decoder: ImageDecoder | None = None


def _start_decode_worker(decoder: ImageDecoder, parent_pid: int) -> None:
    global _worker_decoder
    exit_with_parent(parent_pid)
    _worker_decoder = decoder
    # Ctrl-C reaches every process in the terminal's group; the parent decides what it means and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_in_worker(start: int, paths: Sequence[str]) -> list[DecodedItem]:
    assert _worker_decoder is not None, "decode worker started without its decoder"
    return _worker_decoder.decode_batch(start, paths)


def decoded_batches(
    paths: Sequence[str], decoder: ImageDecoder, *, batch_size: int, num_workers: int | None = None
) -> Iterator[list[DecodedItem]]:
    """Lists of decoded items in input order, decoded in worker processes when there are enough files.

    A process pool of the standard library rather than torch's DataLoader: the
    ONNX runtimes then embed a folder without importing torch (a second of
    start-up). A worker that dies (killed for memory) ends the stream with one
    error; the vectors already yielded are the caller's to keep.
    At most two batches per worker are decoded ahead of the network.
    """
    workers = default_num_workers(len(paths), batch_size) if num_workers is None else num_workers
    starts = range(0, len(paths), batch_size)
    if workers == 0:
        for start in starts:
            yield decoder.decode_batch(start, paths[start : start + batch_size])
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=worker_context(), initializer=_start_decode_worker, initargs=(decoder, os.getpid())
    )
    try:
        in_flight: deque[Future[list[DecodedItem]]] = deque()
        for start in starts:
            in_flight.append(pool.submit(_decode_in_worker, start, list(paths[start : start + batch_size])))
            if len(in_flight) >= 2 * workers:
                yield _result(in_flight.popleft())
        while in_flight:
            yield _result(in_flight.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(batch: Future[list[DecodedItem]]) -> list[DecodedItem]:
    try:
        return batch.result()
    except BrokenProcessPool:
        raise PixclustError(
            "an image decoding worker was killed (out of memory?); run again with fewer --workers "
            "(0 decodes in this process) or a lower --max-pixels"
        ) from None


def default_num_workers(n_files: int, batch_size: int) -> int:
    """Decode workers: one per core up to MAX_DEFAULT_WORKERS, none for a handful of files (process start costs more)."""
    if n_files <= 2 * batch_size:
        return 0
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


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
        decoder = ImageDecoder(
            self.extractor.transform, self.extractor.draft_size, self.max_pixels, measure_pixels=True
        )
        # closing(): when our caller closes us midway, the workers stop now, not at garbage collection.
        batches = decoded_batches(paths, decoder, batch_size=self.batch_size, num_workers=self.num_workers)
        with contextlib.closing(batches):
            for items in batches:
                yield self._embed_items(items)

    def _embed_items(self, items: list[DecodedItem]) -> ExtractedBatch:
        decoded = [item for item in items if item.error is None]
        failures = [(item.index, item.error) for item in items if item.error is not None]
        vectors = (
            self.extractor.embed_batch(np.stack([item.array for item in decoded]))
            if decoded
            else np.empty((0, self.extractor.dim), np.float32)
        )
        return ExtractedBatch(
            indices=np.array([item.index for item in decoded], dtype=np.int64),
            vectors=vectors,
            image_sizes=np.array([item.size for item in decoded], dtype=np.int32).reshape(-1, 2),
            image_stats=np.array([item.stats for item in decoded], dtype=np.float32).reshape(-1, len(IMAGE_STATS)),
            failures=failures,
        )
