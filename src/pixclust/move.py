"""``--move``: move each image into its cluster folder so that a kill at any moment loses nothing.

Before the first file moves, the whole plan goes to ``moves.jsonl`` in the run
folder (written atomically): one line per image, ``{"move": i, "from": ...,
"to": ...}``. After each move a ``{"done": i}`` line is appended and fsynced;
when every file has moved, a ``{"finished": n}`` line closes the journal.

A move on one file system is a rename (atomic). Across file systems (the run
folder is never inside the image folder, so it may be on another disk) it is:
copy to a temporary name beside the destination, fsync, compare the bytes,
rename into place, and only then unlink the source. So at every moment each
file is whole at its source or at its destination (for an instant, at both),
and :func:`resume_moves` finishes from whatever state a kill left.
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.errors import OutputNotWritableError, UsageError
from pixclust.export import CLUSTERS_DIR, cluster_entries

JOURNAL = "moves.jsonl"
_PARTIAL_SUFFIX = ".pixclust-partial"


@dataclass(frozen=True)
class Move:
    source: str
    destination: str


@dataclass
class MoveReport:
    """``moved``: files now at their destination; ``left``: (move, why) for files still at their source."""

    journal: Path
    moved: int = 0
    left: list[tuple[Move, str]] = field(default_factory=list)


def check_no_moves(run_dir: Path) -> None:
    """Refuse to write into a run folder whose cluster folders hold moved originals."""
    journal = run_dir / JOURNAL
    if not journal.exists():
        return
    if not _read_journal(journal)[2]:
        raise UsageError(f"a --move into {run_dir} did not finish; run: pixclust resume-move {run_dir}")
    raise UsageError(
        f"{run_dir} holds images that --move put there (see {journal}); choose another --out so they are never replaced"
    )


def move_into_clusters(run_dir: Path, paths: Sequence[str], labels: np.ndarray) -> MoveReport:
    """Move every image to ``run_dir/clusters/<cluster>/``, journalled as the module says."""
    check_no_moves(run_dir)
    clusters = run_dir / CLUSTERS_DIR
    # Anything there now is links or copies from an earlier run without --move (check_no_moves made sure).
    shutil.rmtree(clusters, ignore_errors=True)
    moves = []
    for file, folder, entry in cluster_entries(paths, labels):
        destination = clusters / folder / entry
        if os.path.islink(file):
            # Moving a link would move no image (and break a relative one); link to it as without --move.
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.abspath(file), destination)
        else:
            moves.append(Move(file, str(destination)))
    journal = run_dir / JOURNAL
    plan = "".join(json.dumps({"move": i, "from": m.source, "to": m.destination}) + "\n" for i, m in enumerate(moves))
    write_text_atomic(journal, plan)
    _fsync_dir(run_dir)
    return _carry_out(journal, moves, done=set())


def resume_moves(run_dir: str | Path) -> MoveReport:
    """Finish a ``--move`` that was interrupted: every file ends at its destination, or is listed as left."""
    journal = Path(run_dir) / JOURNAL
    if not journal.is_file():
        raise UsageError(f"{run_dir} has no {JOURNAL}; only a run folder made with --move can be resumed")
    moves, done, finished = _read_journal(journal)
    if finished:
        return MoveReport(journal, moved=len(moves))
    _drop_torn_line(journal)
    return _carry_out(journal, moves, done)


def _read_journal(journal: Path) -> tuple[list[Move], set[int], bool]:
    moves: list[Move] = []
    done: set[int] = set()
    finished = False
    lines = journal.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break  # a kill while appending can leave the last line torn; that move is checked again
            raise UsageError(f"{journal} line {number} is damaged ({error.msg}); compare it with the files by hand") from error
        if "move" in entry:
            moves.append(Move(entry["from"], entry["to"]))
        elif "done" in entry:
            done.add(entry["done"])
        elif "finished" in entry:
            finished = True
    return moves, done, finished


def _drop_torn_line(journal: Path) -> None:
    """Cut a last line a kill left half-written, so the next mark starts on a line of its own."""
    data = journal.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with open(journal, "r+b") as stream:
            stream.truncate(whole)
            os.fsync(stream.fileno())


def _carry_out(journal: Path, moves: list[Move], done: set[int]) -> MoveReport:
    report = MoveReport(journal, moved=len(done))
    with open(journal, "a", encoding="utf-8") as log:
        for index, move in enumerate(moves):
            if index in done:
                continue
            why_left = _complete(move)
            if why_left:
                report.left.append((move, why_left))
                continue
            report.moved += 1
            _append(log, {"done": index})
        if not report.left:
            _append(log, {"finished": len(moves)})
    return report


def _append(log: TextIO, entry: dict[str, int]) -> None:
    log.write(json.dumps(entry) + "\n")
    log.flush()
    os.fsync(log.fileno())


def _complete(move: Move) -> str | None:
    """Bring one file to its destination from whatever state it is in; None, or why it stays where it is."""
    source, destination = Path(move.source), Path(move.destination)
    partial = destination.with_name(destination.name + _PARTIAL_SUFFIX)
    at_source, at_destination = os.path.lexists(source), os.path.lexists(destination)
    if at_destination and not at_source:
        partial.unlink(missing_ok=True)
        return None
    if at_destination:
        # A kill between renaming a verified copy into place and unlinking the source.
        if not filecmp.cmp(source, destination, shallow=False):
            return f"{destination} already exists with other content; neither file was touched"
        return _unlink_source(source)
    if not at_source:
        return "it is at neither its source nor its destination (moved or deleted by something else)"
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            return f"cannot move it ({error.strerror or error})"
        _copy_across(source, destination, partial)
        return _unlink_source(source)
    _fsync_dir(destination.parent)
    return None


def _copy_across(source: Path, destination: Path, partial: Path) -> None:
    """Put a verified, durable copy of ``source`` at ``destination``; the source is untouched."""
    try:
        shutil.copy2(source, partial, follow_symlinks=False)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        if not filecmp.cmp(source, partial, shallow=False):
            raise OutputNotWritableError(
                f"the copy of {source} in the run folder does not match it; the original is untouched, "
                "check the disk and run pixclust resume-move"
            )
        os.replace(partial, destination)
        _fsync_dir(destination.parent)
    finally:
        partial.unlink(missing_ok=True)


def _unlink_source(source: Path) -> str | None:
    try:
        os.unlink(source)
    except OSError as error:
        return f"copied, but the original cannot be removed ({error.strerror or error}); both copies are whole"
    _fsync_dir(source.parent)
    return None


def _fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` survive a power cut, not only a kill."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
