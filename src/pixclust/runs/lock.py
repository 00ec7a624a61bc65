"""One writer at a time: an exclusive ``flock`` on a run folder's lock file.

The kernel releases an ``flock`` when its holder's descriptor closes, so a
holder that dies (even by ``kill -9``) frees the folder at once; the file keeps
the holder's pid for the message a second writer gets. The file is opened
without following a link.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pixclust.atomic import DISK_FULL_ERRNOS
from pixclust.errors import OutputNotWritableError, RunFolderBusyError, UsageError

# The lock file of a run folder, or of any folder a command writes into.
LOCK_FILE = ".pixclust.lock"


def hold_lock(lock_file: Path) -> int:
    """The descriptor that holds ``lock_file``'s lock (close it to let go); a held lock is one line naming its holder."""
    descriptor = _open_lock_file(lock_file)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(descriptor)
        raise RunFolderBusyError(
            f"{lock_file.parent} is being written by {holder}; wait for it to finish, or choose another --out"
        ) from None
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


@contextmanager
def holding(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s writer lock (made if new) for the block: for output folders that are not run folders."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise
        raise OutputNotWritableError(
            f"cannot make --out {folder} ({error.strerror or error}); choose another --out"
        ) from error
    descriptor = hold_lock(folder / LOCK_FILE)
    try:
        yield
    finally:
        os.close(descriptor)


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
