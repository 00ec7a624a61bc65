"""How pixclust's worker processes start (image decoding, report thumbnails), and how they end with their parent."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_PR_SET_PDEATHSIG = 1
# How often a worker without PR_SET_PDEATHSIG looks for its parent.
_WATCH_INTERVAL_S = 1.0


def worker_context() -> multiprocessing.context.BaseContext | None:
    """Fork on Linux (Python 3.14 would otherwise start a fork server); the platform's default elsewhere.

    A fork server or a spawned worker first re-runs the user's main script,
    so a script that calls pixclust without an ``if __name__ == "__main__"``
    guard would start workers of its own in every worker and fail. A forked
    worker copies this process, threads' locks included, but it only reads,
    decodes, resizes and encodes images (PIL, NumPy): none of the locks our
    threads take (the progress bar's output, the runtimes' thread pools) is
    ever needed there.
    """
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


def map_chunks(
    function: Callable[..., list[Result]], chunks: Sequence[Sequence[Item]], *args: Any
) -> Iterator[list[Result]]:
    """``function(chunk, *args)`` for each chunk, in order, in worker processes (in this one when there is one chunk
    or one CPU); each result is yielded as soon as it and those before it are done, so callers can show progress."""
    yield from map_chunks_sharing(partial(_without_shared, function), None, chunks, *args)


def map_chunks_sharing(
    function: Callable[..., list[Result]], shared: Any, chunks: Sequence[Sequence[Item]], *args: Any
) -> Iterator[list[Result]]:
    """``function(shared, chunk, *args)`` for each chunk, as :func:`map_chunks` calls its function.

    ``shared`` reaches each worker once, as it starts, rather than with every
    chunk: a forked worker inherits it without a copy (elsewhere it is pickled
    once a worker). For what many chunks read, such as images' signatures that
    each of many pairs needs.
    """
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers <= 1:
        for chunk in chunks:
            yield function(shared, chunk, *args)
        return
    with ProcessPoolExecutor(
        workers, mp_context=worker_context(), initializer=_start_worker, initargs=(os.getpid(), shared)
    ) as pool:
        yield from pool.map(_call_with_shared, [function] * len(chunks), chunks, *([arg] * len(chunks) for arg in args))


# What map_chunks_sharing handed this worker process as it started.
_worker_shared: Any = None


def _start_worker(parent_pid: int, shared: Any) -> None:
    global _worker_shared
    exit_with_parent(parent_pid)
    _worker_shared = shared


def _call_with_shared(function: Callable[..., list[Result]], chunk: Sequence[Item], *args: Any) -> list[Result]:
    return function(_worker_shared, chunk, *args)


def _without_shared(
    function: Callable[..., list[Result]], _shared: Any, chunk: Sequence[Item], *args: Any
) -> list[Result]:
    return function(chunk, *args)


def exit_with_parent(parent_pid: int) -> None:
    """Make this worker end when the process that started it (``parent_pid``) dies, even by SIGKILL.

    Call it first in a pool's initializer. A killed parent never shuts its
    pool down, and a forked worker holds the task pipe's writing end itself,
    so it would wait for work forever. On Linux the kernel sends SIGKILL when
    the parent goes; that signal follows the thread that started the worker,
    which is the thread using the pool. Elsewhere a daemon thread watches the
    parent.
    """
    if not _kill_me_with_parent():
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="pixclust-parent-watch", daemon=True).start()
    # The parent may have died before the kernel was told to watch it.
    if os.getppid() != parent_pid:
        os._exit(1)


def _kill_me_with_parent() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    parent = multiprocessing.parent_process()
    if sys.platform == "win32" and parent is not None:
        # Windows never gives an orphan another parent pid; the parent's process handle says when it ends.
        parent.join()
    else:
        while os.getppid() == parent_pid:
            time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)
