"""``--move``: move each image into its cluster folder so that a kill at any moment loses nothing.

Before the first file moves, the whole plan goes to ``moves.jsonl`` in the run
folder (written atomically): a header naming the source and the run folder
(both real paths), then one line per image, ``{"move": i, "from": ...,
"to": ...}``; the run folder's manifest lists every destination as a moved
original, so nothing pixclust does later replaces it. After each move a ``{"done": i}`` line is appended and fsynced;
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
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.curation.export import cluster_entries
from pixclust.errors import OutputNotWritableError, UsageError
from pixclust.runs.folder import CLUSTERS_DIR, DIR, LINK, MOVED, MOVES_JOURNAL, RunFolder

JOURNAL = MOVES_JOURNAL
JOURNAL_FORMAT = 1
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


@dataclass(frozen=True)
class Journal:
    """A journal read back and checked: the planned moves, those marked done, and whether it was closed."""

    moves: list[Move]
    done: set[int]
    finished: bool


def check_no_moves(folder: RunFolder) -> None:
    """Refuse to write into a run folder whose cluster folders hold moved originals (journal or manifest says so)."""
    journal = folder.path(JOURNAL)
    if os.path.lexists(journal) and not read_journal(folder).finished:
        raise UsageError(f"a --move into {folder.root} did not finish; run: pixclust resume-move {folder.root}")
    moved = folder.moved_originals()
    if os.path.lexists(journal) or moved:
        raise UsageError(
            f"{folder.root} holds images that --move put there ({moved[0] if moved else journal}); "
            "choose another --out so they are never replaced"
        )


def move_into_clusters(folder: RunFolder, source: str | Path, paths: Sequence[str], labels: np.ndarray) -> MoveReport:
    """Move every image to ``clusters/<cluster>/`` of the run folder, journalled as the module says.

    Only a regular file reached from ``source`` without passing a link is moved;
    a link, or a file reached through a linked folder (it may live outside the
    source), is linked as without ``--move``.
    """
    check_no_moves(folder)
    folder.remove_tree(CLUSTERS_DIR)
    source_real = os.path.realpath(source)
    moves, links = [], []
    entries = cluster_entries(paths, labels)
    for file, cluster, entry in entries:
        name = f"{CLUSTERS_DIR}/{cluster}/{entry}"
        real = _real_path_inside(file, source, source_real)
        if real is None:
            links.append((file, name))
        else:
            moves.append(Move(real, str(folder.path(name))))
    clusters = sorted({f"{CLUSTERS_DIR}/{cluster}" for _, cluster, _ in entries})
    moved_names = [os.path.relpath(move.destination, folder.root) for move in moves]
    folder.record([(CLUSTERS_DIR, DIR), *((name, DIR) for name in clusters), *((name, MOVED) for name in moved_names)])
    for name in clusters:
        folder.path(name).mkdir(parents=True, exist_ok=True)
    folder.record((name, LINK) for _, name in links)
    for file, name in links:
        os.symlink(os.path.abspath(file), folder.path(name))
    journal = folder.path(JOURNAL)
    header = {"journal": JOURNAL_FORMAT, "source": source_real, "run": str(folder.root)}
    lines = [header, *({"move": i, "from": m.source, "to": m.destination} for i, m in enumerate(moves))]
    write_text_atomic(journal, "".join(json.dumps(line) + "\n" for line in lines))
    _fsync_dir(folder.root)
    return _carry_out(journal, moves, done=set())


def _real_path_inside(file: str, source: str | Path, source_real: str) -> str | None:
    """The real path of a regular file reached from ``source`` through no link, else None."""
    if not _is_regular(file):
        return None
    relative = os.path.relpath(os.path.abspath(file), os.path.abspath(source))
    expected = source_real if relative == "." else os.path.join(source_real, relative)
    real = os.path.realpath(file)
    return real if real == expected and not relative.startswith("..") else None


def _is_regular(path: str | Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def resume_moves(run_dir: str | Path) -> MoveReport:
    """Finish a ``--move`` that was interrupted: every file ends at its destination, or is listed as left."""
    folder = RunFolder.open(run_dir, create=False)
    with folder.writing():
        journal_path = folder.path(JOURNAL)
        if not journal_path.is_file() or journal_path.is_symlink():
            raise UsageError(f"{run_dir} has no {JOURNAL}; only a run folder made with --move can be resumed")
        journal = read_journal(folder)
        if journal.finished:
            return MoveReport(journal_path, moved=len(journal.moves))
        _drop_torn_line(journal_path)
        return _carry_out(journal_path, journal.moves, journal.done)


def read_journal(folder: RunFolder) -> Journal:
    """The run folder's journal, checked before it is trusted.

    A run folder may come from someone else, so each move must go from inside
    the source the journal records to inside this run folder's ``clusters/``,
    with no '..' and no destination named twice; anything else is refused.
    """
    path = folder.path(JOURNAL)
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break  # a kill while appending can leave the last line torn; that move is checked again
            raise UsageError(
                f"{path} line {number} is damaged ({error.msg}); compare it with the files by hand"
            ) from error
    header = entries[0] if entries and isinstance(entries[0], dict) else {}
    source, run = header.get("source"), header.get("run")
    if header.get("journal") != JOURNAL_FORMAT or not isinstance(source, str) or not isinstance(run, str):
        raise UsageError(f"{path} has no journal header this pixclust knows; compare it with the files by hand")
    if run != str(folder.root):
        raise UsageError(f"{path} was written for the run folder {run}, not {folder.root}; resume it there")
    clusters = str(folder.path(CLUSTERS_DIR)) + os.sep
    moves: list[Move] = []
    done: set[int] = set()
    finished = False
    for number, entry in enumerate(entries[1:], 2):
        if not isinstance(entry, dict):
            raise UsageError(f"{path} line {number} is not a journal entry; compare it with the files by hand")
        if "move" in entry:
            move = Move(entry.get("from"), entry.get("to"))
            if (
                entry["move"] != len(moves)
                or not _is_inside(move.source, source)
                or not _is_inside(move.destination, clusters)
            ):
                raise UsageError(
                    f"{path} line {number} moves a file from outside the source {source} or to outside {clusters}; "
                    "pixclust refuses a journal it did not write, so compare it with the files by hand"
                )
            moves.append(move)
        elif isinstance(entry.get("done"), int) and 0 <= entry["done"] < len(moves):
            done.add(entry["done"])
        elif "finished" in entry:
            finished = True
        else:
            raise UsageError(f"{path} line {number} is not a journal entry; compare it with the files by hand")
    if len({move.destination for move in moves}) < len(moves):
        raise UsageError(f"{path} names one destination twice; compare it with the files by hand")
    return Journal(moves, done, finished)


def _is_inside(path: object, folder: str) -> bool:
    """``path`` is an absolute, normalised path strictly inside ``folder`` (no '..', no '.')."""
    if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path:
        return False
    return path.startswith(folder.rstrip(os.sep) + os.sep)


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
    if not _is_regular(source) or os.path.realpath(source.parent) != str(source.parent):
        return "it is no longer a regular file reached without a link, so it stays where it is"
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        if os.path.realpath(destination.parent) != str(destination.parent):
            return f"{destination.parent} is reached through a link, so nothing is moved there"
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
