"""What a file is: the reasons a file is not used, image signatures, and opening only regular files.

Discovery and decoding both end every file they cannot use as a ``SkippedFile``
with one of these reasons, so ``errors.csv`` speaks one vocabulary.
"""

from __future__ import annotations

import importlib.util
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pixclust.errors import DecodeError

REASON_EMPTY = "empty file"


REASON_NOT_IMAGE = "not an image"


REASON_UNSUPPORTED = "unsupported format"


REASON_CORRUPT = "corrupt or truncated"


REASON_TOO_LARGE = "too large"


REASON_UNREADABLE = "unreadable"


REASON_BROKEN_LINK = "broken symlink"


REASON_DECODE_FAILED = "decode failed"


REASON_NOT_REGULAR = "not a regular file"


# The last three are recognised only to be reported as unsupported.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif"}
    | {".heic", ".heif", ".avif"}
)


HEADER_BYTES = 32

# What "no usable images" asks for, in every command that says it.
READABLE_FORMATS = "JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC or AVIF"


# Formats that need a decoder Pillow may lack: the module that brings it, and what to do without it.
# HEIF/HEIC (what phones write) comes from pillow-heif, an optional extra; AVIF is built into Pillow's
# wheels since 11.3 (PIL._avif), but a Pillow built from source may lack it.
_OPTIONAL_DECODERS = {
    "HEIF": ("pillow_heif", "HEIF/HEIC photos need pillow-heif: pip install 'pixclust[heif]' (or pillow-heif)"),
    "AVIF": ("PIL._avif", "this Pillow was built without AVIF: pip install -U 'pillow>=11.3'"),
}


def decoder_available(image_format: str) -> bool:
    """Whether the format's optional decoder is installed (found, not imported: discovery stays fast)."""
    module = _OPTIONAL_DECODERS.get(image_format, (None,))[0]
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def unsupported_detail(image_format: str | None) -> str | None:
    """Why a file of this format cannot be decoded here (with the install that fixes it), or None if it can."""
    if image_format in _OPTIONAL_DECODERS and not decoder_available(image_format):
        return _OPTIONAL_DECODERS[image_format][1]
    return None


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)


# "BM" alone is too common at the start of text, so also require a known
# size of the header that follows the 14-byte file header.
_BMP_INFO_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


_AVIF_BRANDS = frozenset({b"avif", b"avis"})


_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})


_TEXT_CONTROL_BYTES = b"\t\n\f\r"


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    detail: str


def sniff_format(header: bytes) -> str | None:
    """Name the image format the first bytes of a file announce, or None."""
    for signature, image_format in _SIGNATURES:
        if header.startswith(signature):
            return image_format
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    if len(header) >= 18 and header[:2] == b"BM" and int.from_bytes(header[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return "BMP"
    return _sniff_heif_family(header)


def _sniff_heif_family(header: bytes) -> str | None:
    if header[4:8] != b"ftyp":
        return None
    # Major brand at 8, minor version at 12, compatible brands from 16; a
    # generic major brand such as mif1 only says which family via the rest.
    brands = {header[8:12]} | {header[i : i + 4] for i in range(16, len(header) - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


def _describe_content(header: bytes) -> str:
    start = header.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(b"%pdf"):
        return "a PDF document"
    if header.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if start.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if start.startswith((b"<?xml", b"<svg")):
        return "XML or SVG"
    if all(byte >= 0x20 or byte in _TEXT_CONTROL_BYTES for byte in header):
        return "text"
    return "unknown binary data"


def not_an_image_detail(header: bytes) -> str:
    return f"content looks like {_describe_content(header)}, not an image"


def os_reason(error: OSError) -> str:
    return error.strerror or str(error)


_SPECIAL_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular_detail(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    kind = next((name for is_kind, name in _SPECIAL_FILE_KINDS if is_kind(mode)), "something other than a file")
    link = "a link to " if os.path.islink(path) else ""
    return f"it is {link}{kind}; only regular files are read"


def open_regular(path: str | Path) -> io.BufferedReader:
    """Open a regular file for reading; anything else is refused unopened, since opening a FIFO blocks."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DecodeError(REASON_NOT_REGULAR, not_regular_detail(str(path)))
        # Should the file be swapped for a FIFO after the check, a non-blocking open still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise DecodeError(REASON_UNREADABLE, f"cannot read it ({os_reason(error)})") from error
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise DecodeError(REASON_NOT_REGULAR, not_regular_detail(str(path)))
    return file
