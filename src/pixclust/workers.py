"""How pixclust's worker processes start (image decoding, report thumbnails)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import sys


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
