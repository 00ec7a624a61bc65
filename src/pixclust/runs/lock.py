"""One writer at a time: an exclusive ``flock`` on a run folder's lock file.

The kernel releases an ``flock`` when its holder's descriptor closes, so a
holder that dies (even by ``kill -9``) frees the folder at once; the file keeps
the holder's pid for the message a second writer gets. The file is opened
without following a link.

An output folder that is not a run folder (``label --out``, ``export --out``)
gets its lock file, and the folder itself if it was made for the command and
stays empty, removed again on release, so that a refused command leaves the
user's folder as it found it. A lock file can be removed only because every
holder checks, once locked, that the file it locked is still the one at the
path: a writer that opened the file just before its holder removed it would
otherwise lock a file no longer in the folder, beside a third that made a new one.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pixclust.atomic import DISK_FULL_ERRNOS
from pixclust.errors import OutputNotWritableError, RunFolderBusyError, UsageError

# The lock file of a run folder, or of any folder a command writes into.
LOCK_FILE = ".pixclust.lock"
# Times to lock again when the lock file was removed between opening and locking it (by a holder letting go).
LOCK_ATTEMPTS = 5


@contextmanager
def holding(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s writer lock (made if new) for the block: for output folders that are not run folders.

    On release the lock file goes (a stale one a killed holder left included: it is pixclust's by its name alone, as
    every holder rewrites it), and so do the folders made for it that the block left empty.
    """
    made = _missing_folders(folder)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise
            raise OutputNotWritableError(
                f"cannot make --out {folder} ({error.strerror or error}); choose another --out"
            ) from error
        lock_file = folder / LOCK_FILE
        descriptor = hold_lock(lock_file)
        try:
            yield
        finally:
            if _is_at(descriptor, lock_file):
                # Removed while still locked: a writer that opens it now finds it gone once it has the lock, and retries.
                with suppress(OSError):
                    os.unlink(lock_file)
            os.close(descriptor)
    finally:
        _remove_if_empty(made)


def hold_lock(lock_file: Path) -> int:
    """The descriptor that holds ``lock_file``'s lock (close it to let go); a held lock is one line naming its holder."""
    for _ in range(LOCK_ATTEMPTS):
        descriptor = _open_lock_file(lock_file)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(descriptor)
            raise RunFolderBusyError(
                f"{lock_file.parent} is being written by {holder}; wait for it to finish, or choose another --out"
            ) from None
        if _is_at(descriptor, lock_file):
            break
        os.close(descriptor)
    else:
        raise RunFolderBusyError(
            f"{lock_file.parent} is being written by other pixclust commands one after another; "
            "wait for them to finish, or choose another --out"
        )
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pixclust (pid {os.getpid()})\n".encode(), 0)
    except OSError as error:
        # The pid only names the holder in a second writer's message; the lock holds without it, and on a full
        # disk the command's first real write says which file could not be written.
        if error.errno not in DISK_FULL_ERRNOS:
            os.close(descriptor)
            raise
    return descriptor


def _is_at(descriptor: int, lock_file: Path) -> bool:
    """Whether the file open as ``descriptor`` is still the one at ``lock_file``."""
    try:
        on_disk = os.stat(lock_file, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _open_lock_file(lock_file: Path) -> int:
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise
        if error.errno == errno.ELOOP:
            raise UsageError(f"{lock_file} is a link; remove it (pixclust never writes through a link)") from error
        raise OutputNotWritableError(
            f"cannot write to the run folder {lock_file.parent} ({error.strerror or error}); choose another --out"
        ) from error
