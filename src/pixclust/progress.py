"""Progress for long work: count, rate and ETA on stderr, or nothing when quiet."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from pixclust.names import printable


def warn(message: str) -> None:
    """One line ``warning: ...`` on stderr about damage pixclust repairs by itself; shown even when quiet.

    Written to ``sys.stderr`` as it is at the call, so that under a live progress bar
    Rich prints it above the bar; a control character in a name is shown as its escape.
    """
    print(f"warning: {printable(message)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, *, unit: str = "images", quiet: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a Rich bar with rate and ETA unless ``quiet``."""
    if quiet or total == 0:
        yield lambda _n: None
        return
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
