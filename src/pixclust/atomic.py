"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# What a write raises when the disk (or the user's quota, or the size limit on one file) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    The temporary file lives in the same folder so the final ``os.replace`` is
    a rename on one file system (atomic on POSIX and Windows). If the block
    raises, the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, permissions_for_new(0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except OSError as error:
        # A write to a full disk fails without a file name (Python's and Arrow's alike); the message needs one.
        if error.errno in DISK_FULL_ERRNOS and error.filename is None:
            error.filename = str(target)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def permissions_for_new(base: int) -> int:
    """The mode ``open``/``mkdir`` would give under the current umask.

    ``mkstemp``/``mkdtemp`` make private (0600/0700) entries; the run folder's
    files should be as readable as anything else the user creates.
    """
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
