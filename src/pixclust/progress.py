"""How long work reports itself: progress bars, a caller's callback, or nothing; and repair warnings.

By default each long step (hashing, embedding, thumbnails, maps, fine-tuning)
shows a Rich bar on stderr with count, rate and ETA. :func:`reporting` changes
that for everything run inside it, however deep: a callback receives
``(task, done, total)`` instead, or ``None`` shows nothing. The public entry
points' ``quiet=True`` is ``reporting(None)``, so no internal function carries
a ``quiet`` flag.

Warnings about damage pixclust repairs by itself go to the ``pixclust`` logger;
where nobody configured logging they are printed as one ``warning: ...`` line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from pixclust.names import printable

ProgressCallback = Callable[[str, int, int], None]

logger = logging.getLogger("pixclust")


class _RichBars:
    """The default reporter: a Rich progress bar on stderr per task."""


_RICH_BARS = _RichBars()
_reporter: ContextVar[ProgressCallback | _RichBars | None] = ContextVar("pixclust_progress", default=_RICH_BARS)


class WarningLines(logging.Handler):
    """Each record as one ``warning: ...`` line on ``sys.stderr`` as it is at the time, control characters escaped.

    The CLI puts it on the ``pixclust`` logger: under a live progress bar Rich
    has replaced ``sys.stderr``, and prints the line above the bar.
    """

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {printable(record.getMessage())}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block, pixclust's warnings are ``warning:`` lines and nothing else: the CLI owns its output."""
    handler, propagate = WarningLines(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def warn(message: str) -> None:
    """Report damage pixclust repairs by itself; shown even when progress is not.

    Logged to ``logging.getLogger("pixclust")`` where logging is configured;
    otherwise one ``warning: ...`` line on ``sys.stderr`` as it is at the call (so
    that under a live progress bar Rich prints it above the bar), with any control
    character of a name shown as its escape.
    """
    if logger.hasHandlers():
        logger.warning(message)
    else:
        WarningLines().emit(logger.makeRecord(logger.name, logging.WARNING, "", 0, message, None, None))


@contextlib.contextmanager
def reporting(callback: ProgressCallback | None) -> Iterator[None]:
    """Within the block, progress goes to ``callback(task, done, total)``, or nowhere for None."""
    token = _reporter.set(callback)
    try:
        yield
    finally:
        _reporter.reset(token)


def quietly(quiet: bool) -> contextlib.AbstractContextManager[None]:
    """No progress within the block when ``quiet``; otherwise whatever the caller chose."""
    return reporting(None) if quiet else contextlib.nullcontext()


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, unit: str = "images") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for a task of ``total`` steps, reported as :func:`reporting` chose."""
    reporter = _reporter.get()
    if reporter is None or total == 0:
        yield lambda _n: None
    elif isinstance(reporter, _RichBars):
        with _rich_bar(description, total, unit) as advance:
            yield advance
    else:
        done = 0
        reporter(description, done, total)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            reporter(description, done, total)

        yield advance


@contextlib.contextmanager
def _rich_bar(description: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.1f} {unit}/s" if speed else "")

        yield advance
