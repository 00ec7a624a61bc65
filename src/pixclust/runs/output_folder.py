"""Folders a user names for a command's output (``export --out``, ``label --out``): pixclust replaces only its own files.

Such a folder is not a run folder: it may be one the user already keeps things in, and a
file there named ``labels.csv`` or ``data.json`` may be the user's own (a labelled list
typed by hand, a FiftyOne dataset). A name is therefore no proof of ownership.
``.pixclust-output.json`` records the SHA-256 of each file pixclust wrote, and a file
may be replaced only while its bytes are still those: one pixclust did not write, or one
changed since (edited by hand), is refused in one line before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pixclust.atomic import write_text_atomic
from pixclust.errors import UsageError
from pixclust.runs.lock import holding

OWNED_FILE = ".pixclust-output.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


@contextmanager
def writing_into(folder: str | Path, command: str) -> Iterator[OutputFolder]:
    """Hold ``folder``'s lock (made if new; never through a link) for the block, with what pixclust wrote there."""
    root = Path(folder)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise UsageError(f"--out {root} is not a folder (or is a link); choose a new or empty folder")
    with holding(root):
        yield OutputFolder(root, command)


class OutputFolder:
    """The files pixclust wrote in ``root`` (relative name -> SHA-256); made by :func:`writing_into`, under the lock."""

    def __init__(self, root: Path, command: str) -> None:
        self.root = root
        self.command = command
        self.owned = self._read()

    def _read(self) -> dict[str, str]:
        record = self.root / OWNED_FILE
        if record.is_symlink():
            raise UsageError(f"{record} is a link; remove it (pixclust never writes through a link)")
        if not record.is_file():
            return {}
        try:
            owned = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{record} cannot be read ({error}); remove it, or choose another --out") from None
        if not isinstance(owned, dict) or not all(isinstance(v, str) for v in owned.values()):
            raise UsageError(f"{record} is not what pixclust writes there; remove it, or choose another --out")
        return owned

    def check_replaceable(self, paths: Iterable[Path]) -> None:
        """Refuse before writing if any of ``paths`` exists and is not a file pixclust wrote there, unchanged."""
        for path in paths:
            name = path.relative_to(self.root).as_posix()
            for folder in path.parents:
                if folder == self.root:
                    break
                if folder.is_symlink():
                    raise UsageError(f"{folder} is a link; remove it (pixclust never writes through a link)")
            if not os.path.lexists(path):
                continue
            is_ours = (
                not path.is_symlink() and path.is_file() and name in self.owned and _sha256(path) == self.owned[name]
            )
            if not is_ours:
                raise UsageError(
                    f"{path} is not a file pixclust {self.command} wrote (or it was changed since); "
                    "move it away, or choose another --out"
                )

    def record(self, paths: Iterable[Path]) -> None:
        """Remember ``paths``, just written, as pixclust's own."""
        for path in paths:
            self.owned[path.relative_to(self.root).as_posix()] = _sha256(path)
        write_text_atomic(self.root / OWNED_FILE, json.dumps(self.owned, indent=1, sort_keys=True) + "\n")
