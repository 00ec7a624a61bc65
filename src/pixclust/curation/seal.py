"""The seal on a move journal: proof that this user, on this machine, planned its moves.

A run folder may come from someone else, and its journal says where files go.
:func:`pixclust.curation.move.read_journal` refuses a journal whose moves leave
its source or the run folder, but paths alone cannot tell a journal pixclust
wrote from one crafted to name a source of the user's own (their home) and a
file to bring "back" there. So every journal's plan is sealed with an
HMAC-SHA256 under a key only this user can read, and resuming or restoring a
journal needs that seal, or the user's word that they made the move
(``--trust-journal``: a run folder carried to another machine, or a journal an
older pixclust wrote before there were seals).

The key is 32 random bytes in ``$PIXCLUST_STATE``, else ``$XDG_STATE_HOME/pixclust``,
else ``~/.local/state/pixclust``; it is made once, readable by its owner only,
and a journal sealed with a lost key only needs ``--trust-journal``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "journal.key"
_KEY_BYTES = 32


def state_dir() -> Path:
    """$PIXCLUST_STATE, else $XDG_STATE_HOME/pixclust, else ~/.local/state/pixclust."""
    if os.environ.get("PIXCLUST_STATE"):
        return Path(os.environ["PIXCLUST_STATE"])
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "pixclust"


def seal(plan: str) -> str | None:
    """The seal of a journal's plan; None where no key can be kept (the journal then needs --trust-journal)."""
    key = _key(create=True)
    return None if key is None else hmac.new(key, plan.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def is_sealed(plan: str, value: object) -> bool:
    """Whether ``value`` is this user's seal of ``plan``."""
    key = _key(create=False)
    if key is None or not isinstance(value, str):
        return False
    expected = hmac.new(key, plan.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, value)


def _key(*, create: bool) -> bytes | None:
    path = state_dir() / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(descriptor, secrets.token_bytes(_KEY_BYTES))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        # A link, not a rename: two processes making the key at once must end up sharing the first one.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        os.unlink(draft)
        return _read_key(path)
    except OSError:
        return None


def _read_key(path: Path) -> bytes | None:
    """The key, if it is a whole key in a regular file reached without a link."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        key = os.read(descriptor, _KEY_BYTES + 1)
    finally:
        os.close(descriptor)
    return key if len(key) == _KEY_BYTES else None
