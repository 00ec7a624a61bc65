"""Finding image files in a folder: by extension or by content, never opening what is not a regular file.

Everything a folder can hold that is not a usable image (broken links, FIFOs,
empty files, text named .jpg, camera raw files) is listed as a ``SkippedFile``
with its reason; run folders below the root are passed over.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pixclust.embedding.files import (
    HEADER_BYTES,
    IMAGE_EXTENSIONS,
    REASON_BROKEN_LINK,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_NOT_REGULAR,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    SkippedFile,
    not_an_image_detail,
    not_regular_detail,
    open_regular,
    os_reason,
    sniff_format,
    unsupported_detail,
)
from pixclust.errors import DecodeError, UsageError
from pixclust.runs.folder import is_run_folder

# Camera raw files are TIFF inside, so sniffing would accept them, but Pillow
# only sees their embedded thumbnail; clustering that next to the JPEG twin
# would be misleading.
_CAMERA_RAW_EXTENSIONS = frozenset(
    {".arw", ".cr2", ".dng", ".nef", ".nrw", ".pef", ".sr2", ".srw", ".3fr", ".erf", ".iiq"}
)


_CAMERA_RAW_DETAIL = "camera raw files are not decoded; export them to JPEG or TIFF"


@dataclass(frozen=True)
class Discovery:
    files: list[Path]
    skipped: list[SkippedFile]


def discover_images(
    root: str | Path,
    *,
    exclude: Sequence[str | Path] = (),
    include_hidden: bool = False,
    examine: Callable[[Sequence[str]], Sequence[Path | SkippedFile | None]] | None = None,
) -> Discovery:
    """Find the image files under ``root`` (a folder, walked recursively, or one file).

    Files count as candidates by extension or by content; candidates that
    cannot be used are listed in ``skipped`` with the reason. The walk lists
    folders here; reading each file's first bytes is ``examine``'s (default
    :func:`examine_files`, in this process; ``--engine ray`` hands it to Ray
    tasks), which answers for every path, in order.
    """
    root_path = Path(root)
    _require_readable_root(root_path)
    if not root_path.is_dir():
        # The user named this file, so say why it is unusable whatever its name.
        return _discovery_of([_examine_file(str(root_path), has_image_extension=True)])
    excluded = tuple(os.path.realpath(path) for path in exclude)
    walked = list(_walk_files(str(root_path), excluded, include_hidden))
    candidates = [item for item in walked if not isinstance(item, SkippedFile)]
    not_walked = [item for item in walked if isinstance(item, SkippedFile)]
    return _discovery_of([*not_walked, *(examine or examine_files)(candidates)])


def walk_candidates(root: str | Path, *, include_hidden: bool = False) -> list[str]:
    """The files under ``root`` that :func:`discover_images` would examine, unexamined: a cheap list to sample from."""
    root_path = Path(root)
    _require_readable_root(root_path)
    if not root_path.is_dir():
        return [str(root_path)]
    return [item for item in _walk_files(str(root_path), (), include_hidden) if not isinstance(item, SkippedFile)]


def examine_files(paths: Sequence[str]) -> list[Path | SkippedFile | None]:
    """What each walked file is: a usable candidate, a reported skip, or None (nothing of ours)."""
    return [_examine_file(path, _has_image_extension(path)) for path in paths]


def _require_readable_root(root: Path) -> None:
    if not root.exists():
        raise UsageError(f"{root} does not exist; check the path")
    if root.is_dir():
        if not os.access(root, os.R_OK | os.X_OK):
            raise UsageError(f"cannot read folder {root}: permission denied; check its permissions")
    elif root.is_file():
        if not os.access(root, os.R_OK):
            raise UsageError(f"cannot read file {root}: permission denied; check its permissions")
    else:
        raise UsageError(f"{root} is neither a file nor a folder; point pixclust at images")


def _discovery_of(outcomes: Sequence[Path | SkippedFile | None]) -> Discovery:
    files = sorted(outcome for outcome in outcomes if isinstance(outcome, Path))
    # Spelled as str(Path) so a skipped path reads like a used one ("a.jpg", not "./a.jpg").
    skipped = sorted(
        (replace(outcome, path=str(Path(outcome.path))) for outcome in outcomes if isinstance(outcome, SkippedFile)),
        key=lambda skipped_file: skipped_file.path,
    )
    return Discovery(files=files, skipped=skipped)


def _has_image_extension(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _walk_files(root: str, excluded: tuple[str, ...], include_hidden: bool) -> Iterator[str | SkippedFile]:
    """Yield each distinct file path under root, and a SkippedFile for what cannot be walked.

    Symlinks are followed only after the plain tree has been walked, so a file
    reachable both directly and through a link is reported at its own path.
    Real paths of folders and files are tracked, so links never loop and
    never repeat a file.
    """
    visited_dirs: set[str] = set()
    seen_files: set[str] = set()
    plain_dirs = [(root, os.path.realpath(root))]
    linked_dirs: list[tuple[str, str]] = []
    linked_files: list[tuple[str, str]] = []
    while plain_dirs or linked_dirs:
        dir_path, dir_real_path = plain_dirs.pop() if plain_dirs else linked_dirs.pop(0)
        if dir_real_path in visited_dirs or _is_within(dir_real_path, excluded):
            continue
        if dir_path != root and is_run_folder(dir_path):
            # A run folder's links and copies are the source's images again, and --move must never take them back.
            continue
        visited_dirs.add(dir_real_path)
        try:
            scan = _scan_dir(dir_path, dir_real_path, include_hidden)
        except OSError as error:
            yield SkippedFile(dir_path, REASON_UNREADABLE, f"cannot list this folder ({os_reason(error)})")
            continue
        for path in scan.broken_links:
            yield SkippedFile(path, REASON_BROKEN_LINK, "the link's target does not exist")
        for path in scan.special_files:
            yield SkippedFile(path, REASON_NOT_REGULAR, not_regular_detail(path))
        for path, real_path in scan.files:
            if _claim(real_path, seen_files, excluded):
                yield path
        linked_dirs.extend(scan.linked_dirs)
        linked_files.extend(scan.linked_files)
        # Reversed so the stack pops them in name order, keeping the walk deterministic.
        plain_dirs.extend(reversed(scan.subdirs))
    for link_path, target_real_path in linked_files:
        if _claim(target_real_path, seen_files, excluded):
            yield link_path


@dataclass
class _DirScan:
    """One folder's entries by kind, each as (path as found, real path)."""

    files: list[tuple[str, str]] = field(default_factory=list)
    subdirs: list[tuple[str, str]] = field(default_factory=list)
    linked_files: list[tuple[str, str]] = field(default_factory=list)
    linked_dirs: list[tuple[str, str]] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    special_files: list[str] = field(default_factory=list)


def _scan_dir(dir_path: str, dir_real_path: str, include_hidden: bool) -> _DirScan:
    scan = _DirScan()
    for entry in _list_dir(dir_path, include_hidden):
        kind = _entry_kind(entry)
        if kind == "broken link":
            if _has_image_extension(entry.name):
                scan.broken_links.append(entry.path)
        elif kind == "other":
            # Sockets, FIFOs and devices are never images, and opening a FIFO would block;
            # one named like an image is still the user's to hear about.
            if _has_image_extension(entry.name):
                scan.special_files.append(entry.path)
        elif entry.is_symlink():
            found = (entry.path, os.path.realpath(entry.path))
            (scan.linked_dirs if kind == "dir" else scan.linked_files).append(found)
        else:
            # Not a link, so its real path follows from its folder's without a system call.
            found = (entry.path, os.path.join(dir_real_path, entry.name))
            (scan.subdirs if kind == "dir" else scan.files).append(found)
    return scan


def _list_dir(dir_path: str, include_hidden: bool) -> list[os.DirEntry[str]]:
    with os.scandir(dir_path) as listing:
        return sorted(
            (entry for entry in listing if include_hidden or not entry.name.startswith(".")),
            key=lambda entry: entry.name,
        )


def _claim(real_path: str, seen_files: set[str], excluded: tuple[str, ...]) -> bool:
    """Record a file as used, unless it was already used or is excluded."""
    if real_path in seen_files or _is_within(real_path, excluded):
        return False
    seen_files.add(real_path)
    return True


def _entry_kind(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:
        # A link that points at itself fails with "too many levels of symbolic links".
        return "broken link"
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "broken link"
    return "other"


def _is_within(real_path: str, excluded: tuple[str, ...]) -> bool:
    return any(
        real_path == excluded_path or real_path.startswith(excluded_path.rstrip(os.sep) + os.sep)
        for excluded_path in excluded
    )


def _examine_file(path: str, has_image_extension: bool) -> Path | SkippedFile | None:
    """Decide what one file is: a usable candidate, a reported skip, or nothing of ours."""
    if os.path.splitext(path)[1].lower() in _CAMERA_RAW_EXTENSIONS:
        return SkippedFile(path, REASON_UNSUPPORTED, _CAMERA_RAW_DETAIL)
    outcome = _classify_by_content(path)
    if isinstance(outcome, Path) or has_image_extension or outcome.reason == REASON_UNSUPPORTED:
        return outcome
    # Without an image extension, unreadable or non-image files are simply not ours.
    return None


def _classify_by_content(path: str) -> Path | SkippedFile:
    try:
        with open_regular(path) as file:
            header = file.read(HEADER_BYTES)
    except DecodeError as error:
        return SkippedFile(path, error.reason, error.detail)
    except OSError as error:
        return SkippedFile(path, REASON_UNREADABLE, f"cannot read it ({os_reason(error)})")
    if not header:
        return SkippedFile(path, REASON_EMPTY, "file is 0 bytes")
    image_format = sniff_format(header)
    detail = unsupported_detail(image_format)
    if detail:
        return SkippedFile(path, REASON_UNSUPPORTED, detail)
    if image_format is None:
        return SkippedFile(path, REASON_NOT_IMAGE, not_an_image_detail(header))
    return Path(path)
