"""Every move pixclust makes, in one journal, so that a kill at any moment loses nothing.

``cluster --move`` moves each image into its cluster folder; ``duplicates
--move-copies`` moves every copy that is not its group's keeper aside; ``restore``
puts either back. Before the first file moves, the whole plan goes to
``moves.jsonl`` in the run folder (written atomically): a header naming the
source, the run folder (both real paths) and the tree the files go into
(``clusters`` or ``duplicate_copies``), then one line per image, ``{"move": i,
"from": ..., "to": ...}``; the run folder's manifest lists every destination as
a moved original, so nothing pixclust does later replaces it. After each move a
``{"done": i}`` line is appended and fsynced; when every file has moved, a
``{"finished": n}`` line closes the plan. A restore appends ``{"restore": n}``,
then ``{"restored": i}`` per file back at its source, then ``{"restored_all":
n}``; the same checks and the same resume command serve both directions.

A move on one file system is a rename (atomic). Across file systems (the run
folder is never inside the image folder, so it may be on another disk) it is:
copy to a temporary name beside the destination, fsync, compare the bytes,
rename into place, and only then unlink the source. So at every moment each
file is whole at its source or at its destination (for an instant, at both),
and :func:`resume_moves` finishes from whatever state a kill left.
"""

from __future__ import annotations

import contextlib
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
from pixclust.curation.export import cluster_entries, folder_entries
from pixclust.curation.seal import is_sealed, seal
from pixclust.errors import OutputNotWritableError, UsageError
from pixclust.runs.folder import CLUSTERS_DIR, DIR, DUPLICATE_COPIES_DIR, LINK, MOVED, MOVES_JOURNAL, RunFolder

JOURNAL = MOVES_JOURNAL
JOURNAL_FORMAT = 1
# The trees a journal may move files into; a journal from before the header named one moved into clusters/.
MOVE_TREES = (CLUSTERS_DIR, DUPLICATE_COPIES_DIR)
_PARTIAL_SUFFIX = ".pixclust-partial"


@dataclass(frozen=True)
class Move:
    source: str
    destination: str


@dataclass
class MoveReport:
    """``moved``: files now where this step put them (back at their source, for a restore); ``left``: (move, why)
    for files a resume may still bring there; ``kept``: (file, why) for files never planned to move (reached
    through a link, or gone)."""

    journal: Path
    into: str = CLUSTERS_DIR
    restored: bool = False
    moved: int = 0
    left: list[tuple[Move, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Journal:
    """A journal read back and checked: the planned moves, those done, and how far a restore got."""

    moves: list[Move]
    done: set[int]
    finished: bool
    into: str = CLUSTERS_DIR
    restoring: bool = False
    restored: set[int] = field(default_factory=set)
    restored_all: bool = False
    sealed: bool = False

    @property
    def unfinished(self) -> bool:
        return not self.restored_all if self.restoring else not self.finished


def check_moves_finished(folder: RunFolder) -> Journal | None:
    """Refuse any write to a run folder whose last move (or restore) did not finish; its journal, if any."""
    journal = read_journal(folder) if os.path.lexists(folder.path(JOURNAL)) else None
    if journal is not None and journal.unfinished:
        raise UsageError(f"a move into {folder.root} did not finish; run: pixclust resume-move {folder.root}")
    return journal


def check_no_moves(folder: RunFolder) -> None:
    """Refuse to write where moved originals are (journal or manifest says so): into a move tree, or a new move."""
    journal_path = folder.path(JOURNAL)
    journal = check_moves_finished(folder)
    moved = folder.moved_originals()
    if (journal is not None and not journal.restored_all) or moved:
        raise UsageError(
            f"{folder.root} holds images that --move or --move-copies put there ({moved[0] if moved else journal_path}); "
            f"choose another folder so they are never replaced, or put them back first: pixclust restore {folder.root}"
        )


def move_into_clusters(
    folder: RunFolder,
    source: str | Path,
    paths: Sequence[str],
    labels: np.ndarray,
    names: dict[int, str] | None = None,
) -> MoveReport:
    """Move every image to ``clusters/<cluster>/`` of the run folder (``names``: the clusters' folders, by
    default ``cluster_names``), journalled as the module says.

    Only a regular file reached from ``source`` without passing a link is moved;
    a link, or a file reached through a linked folder (it may live outside the
    source), is linked as without ``--move``.
    """
    return _move_into(folder, CLUSTERS_DIR, source, cluster_entries(paths, labels, names), link_the_rest=True)


def move_copies_aside(
    folder: RunFolder, source: str | Path, copies: Sequence[str], groups: Sequence[int]
) -> MoveReport:
    """Move each duplicate copy (``copies[i]``, of group ``groups[i]``) to ``duplicate_copies/group_N/``.

    As with ``--move``, only a regular file reached from ``source`` without a link
    moves; any other stays where it is and is listed in the report's ``kept``.
    """
    width = max(3, len(str(max(groups, default=0))))
    entries = folder_entries(copies, [f"group_{group:0{width}d}" for group in groups])
    return _move_into(folder, DUPLICATE_COPIES_DIR, source, entries, link_the_rest=False)


def _move_into(
    folder: RunFolder, tree: str, source: str | Path, entries: list[tuple[str, str, str]], *, link_the_rest: bool
) -> MoveReport:
    check_no_moves(folder)
    folder.remove_tree(tree)
    source_real = os.path.realpath(source)
    moves, links, kept = [], [], []
    for file, subfolder, entry in entries:
        name = f"{tree}/{subfolder}/{entry}"
        real = _real_path_inside(file, source, source_real)
        if real is not None:
            moves.append(Move(real, str(folder.path(name))))
        elif link_the_rest:
            links.append((file, name))
        else:
            kept.append((file, f"it is not a regular file reached from {source} without a link, so it stays"))
    moved_names = [os.path.relpath(move.destination, folder.root) for move in moves]
    # Every cluster gets its folder; a duplicate group only where one of its copies moves.
    subfolders = sorted({name.rsplit("/", 1)[0] for name in [*moved_names, *(name for _, name in links)]})
    folder.record([(tree, DIR), *((name, DIR) for name in subfolders), *((name, MOVED) for name in moved_names)])
    folder.path(tree).mkdir(exist_ok=True)
    for name in subfolders:
        folder.path(name).mkdir(parents=True, exist_ok=True)
    folder.record((name, LINK) for _, name in links)
    for file, name in links:
        os.symlink(os.path.abspath(file), folder.path(name))
    journal = folder.path(JOURNAL)
    header: dict[str, object] = {
        "journal": JOURNAL_FORMAT,
        "source": source_real,
        "run": str(folder.root),
        "into": tree,
    }
    lines = [json.dumps({"move": i, "from": m.source, "to": m.destination}) for i, m in enumerate(moves)]
    header["seal"] = seal(_plan(header, lines))
    write_text_atomic(journal, "".join(line + "\n" for line in [json.dumps(header), *lines]))
    _fsync_dir(folder.root)
    report = _carry_out(journal, moves, done=set(), into=tree)
    report.kept = kept
    return report


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


def resume_moves(run_dir: str | Path, *, trust_journal: bool = False) -> MoveReport:
    """Finish a move (or a restore) that was interrupted: every file ends where it was going, or is listed as left.

    The journal must carry this user's seal (:mod:`pixclust.curation.seal`) unless ``trust_journal``.
    """
    folder = RunFolder.open(run_dir, create=False)
    with folder.writing():
        journal_path, journal = _journal_of(folder, run_dir, "resumed", trust_journal=trust_journal)
        if journal.restoring:
            return _carry_out_restore(folder, journal_path, journal)
        if journal.finished:
            return MoveReport(journal_path, into=journal.into, moved=len(journal.moves))
        return _carry_out(journal_path, journal.moves, journal.done, into=journal.into)


def restore_moves(run_dir: str | Path, *, trust_journal: bool = False) -> MoveReport:
    """Put every file a move took into ``run_dir`` back where it was, journalled like the move itself.

    A file whose original place now holds other bytes stays in the run folder
    and is listed as left; the same bytes there already count as restored (the
    moved copy is dropped, both being whole). Once every file is back, the
    emptied tree is removed, unless something pixclust did not make is in it.
    The journal must carry this user's seal unless ``trust_journal``.
    """
    folder = RunFolder.open(run_dir, create=False)
    with folder.writing():
        journal_path, journal = _journal_of(folder, run_dir, "restored", trust_journal=trust_journal)
        if not journal.restoring:
            with open(journal_path, "a", encoding="utf-8") as log:
                _append(log, {"restore": len(journal.moves)})
            journal = Journal(journal.moves, journal.done, journal.finished, journal.into, restoring=True)
        return _carry_out_restore(folder, journal_path, journal)


def _journal_of(folder: RunFolder, run_dir: str | Path, what: str, *, trust_journal: bool) -> tuple[Path, Journal]:
    journal_path = folder.path(JOURNAL)
    if not journal_path.is_file() or journal_path.is_symlink():
        raise UsageError(
            f"{run_dir} has no {JOURNAL}; only a folder that --move or --move-copies moved images into can be {what}"
        )
    journal = read_journal(folder)
    if not journal.sealed and not trust_journal:
        raise UsageError(
            f"{journal_path} does not carry your seal (it was written by someone else, on another machine, or by an "
            "older pixclust), so its moves are not carried out; if you made them yourself, add --trust-journal"
        )
    _drop_torn_line(journal_path)
    return journal_path, journal


def read_journal(folder: RunFolder) -> Journal:
    """The run folder's journal, checked before it is trusted.

    A run folder may come from someone else, so each move must go from inside
    the source the journal records to inside one of this run folder's move
    trees, with no '..' and no destination named twice; anything else is refused.
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
    source, run, into = header.get("source"), header.get("run"), header.get("into", CLUSTERS_DIR)
    if (
        header.get("journal") != JOURNAL_FORMAT
        or not isinstance(source, str)
        or not isinstance(run, str)
        or into not in MOVE_TREES
    ):
        raise UsageError(f"{path} has no journal header this pixclust knows; compare it with the files by hand")
    if run != str(folder.root):
        raise UsageError(f"{path} was written for the run folder {run}, not {folder.root}; resume it there")
    tree = str(folder.path(into)) + os.sep
    moves: list[Move] = []
    marks: dict[str, set[int]] = {"done": set(), "restored": set()}
    closed: set[str] = set()
    for number, entry in enumerate(entries[1:], 2):
        if not isinstance(entry, dict):
            raise UsageError(f"{path} line {number} is not a journal entry; compare it with the files by hand")
        mark = next((key for key in marks if key in entry), None)
        if "move" in entry:
            move = Move(entry.get("from"), entry.get("to"))
            if (
                entry["move"] != len(moves)
                or not _is_inside(move.source, source)
                or not _is_inside(move.destination, tree)
            ):
                raise UsageError(
                    f"{path} line {number} moves a file from outside the source {source} or to outside {tree}; "
                    "pixclust refuses a journal it did not write, so compare it with the files by hand"
                )
            moves.append(move)
        elif mark is not None and isinstance(entry[mark], int) and 0 <= entry[mark] < len(moves):
            marks[mark].add(entry[mark])
        elif len(entry) == 1 and next(iter(entry)) in ("finished", "restore", "restored_all"):
            closed.add(next(iter(entry)))
        else:
            raise UsageError(f"{path} line {number} is not a journal entry; compare it with the files by hand")
    if len({move.destination for move in moves}) < len(moves):
        raise UsageError(f"{path} names one destination twice; compare it with the files by hand")
    plan = [json.dumps({"move": i, "from": m.source, "to": m.destination}) for i, m in enumerate(moves)]
    return Journal(
        moves,
        marks["done"],
        "finished" in closed,
        into,
        restoring="restore" in closed,
        restored=marks["restored"],
        restored_all="restored_all" in closed,
        sealed=is_sealed(
            _plan({key: value for key, value in header.items() if key != "seal"}, plan), header.get("seal")
        ),
    )


def _plan(header: dict[str, object], move_lines: list[str]) -> str:
    """What a journal's seal covers: its header (without the seal) and every planned move, as written."""
    return "\n".join([json.dumps(header), *move_lines])


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


def _carry_out(journal: Path, moves: list[Move], done: set[int], *, into: str) -> MoveReport:
    report = MoveReport(journal, into=into, moved=len(done))
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


def _carry_out_restore(folder: RunFolder, journal: Path, record: Journal) -> MoveReport:
    """Bring every planned file back to its source (the reverse of each move), then clear the emptied tree."""
    report = MoveReport(journal, into=record.into, restored=True, moved=len(record.restored))
    if not record.restored_all:
        with open(journal, "a", encoding="utf-8") as log:
            for index, move in enumerate(record.moves):
                if index in record.restored:
                    continue
                why_left = _complete(Move(move.destination, move.source))
                if why_left:
                    report.left.append((move, why_left))
                    continue
                report.moved += 1
                _append(log, {"restored": index})
            if report.left:
                return report
            _append(log, {"restored_all": len(record.moves)})
    folder.release_moved(record.into)
    # Something the user put there since is not pixclust's to remove; the tree then stays, and so does it.
    with contextlib.suppress(UsageError):
        folder.remove_tree(record.into)
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
