"""Walking and removing a folder tree without ever following a link: a link is listed or unlinked, never entered."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath


def walk_without_following(top: Path, tree: str) -> Iterator[tuple[str, bool]]:
    """(name relative to the run folder, is a folder) of everything under ``top``, never through a link."""
    for dir_path, dir_names, file_names in os.walk(top, followlinks=False):
        relative = PurePosixPath(tree, os.path.relpath(dir_path, top)).as_posix().removesuffix("/.")
        for name in dir_names:
            path = os.path.join(dir_path, name)
            yield f"{relative}/{name}", not os.path.islink(path)
        for name in file_names:
            yield f"{relative}/{name}", False


def remove_without_following(top: Path) -> None:
    """Unlink every file and link under ``top`` and remove its folders; a link is removed, never entered."""
    if os.path.islink(top):
        os.unlink(top)
        return
    for dir_path, dir_names, file_names in os.walk(top, topdown=False, followlinks=False):
        for name in file_names:
            os.unlink(os.path.join(dir_path, name))
        for name in dir_names:
            path = os.path.join(dir_path, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                os.rmdir(path)
    os.rmdir(top)
