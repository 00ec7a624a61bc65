"""Batched feature extraction: decode in worker processes while the model runs.

Each worker reads, decodes (``images.load_rgb``) and transforms one file at a
time; the main process stacks them into batches and runs the network. A file
that cannot be decoded comes back as a failure with its reason and never
stops the stream. Only one batch of decoded images is held at a time per
worker, never the whole folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixclust.errors import DecodeError, UsageError
from pixclust.images import DEFAULT_MAX_PIXELS, REASON_DECODE_FAILED, load_rgb
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
            size = image.size
            return index, self.transform(image), size, None
        except DecodeError as error:
            return index, None, (0, 0), error
        except Exception as error:  # a transform failing on one odd image must not end the run
            return index, None, (0, 0), DecodeError(REASON_DECODE_FAILED, f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def _sigchld_handler_restored() -> Iterator[None]:
    """Put back the SIGCHLD handler that a multi-worker DataLoader installs and never removes.

    torch's handler stays for the life of the process and inspects its registry of
    worker processes whenever any child exits; with that handler left behind, a
    later, unrelated child process exiting crashed the interpreter (seen with
    faiss and OpenVINO loaded). The DataLoader still notices a dead worker without
    it, by checking its workers whenever it waits for a batch.
    """
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGCHLD)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous if previous is not None else signal.SIG_DFL)


def _collate(items: list[Any]) -> list[Any]:
    return items


def decoded_batches(files: DecodedFiles, *, batch_size: int, num_workers: int | None = None) -> Iterator[list[Any]]:
    """Lists of ``DecodedFiles`` items in input order, decoded in worker processes when there are enough files."""
    from torch.utils.data import DataLoader

    workers = default_num_workers(len(files), batch_size) if num_workers is None else num_workers
    loader = DataLoader(
        files, batch_size=batch_size, num_workers=workers, collate_fn=_collate, prefetch_factor=2 if workers else None
    )
    with _sigchld_handler_restored():
        yield from loader


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
