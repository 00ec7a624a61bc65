"""Finding image files in a folder and decoding them into plain RGB pictures.

Everything a user's folder can throw at us (empty files, text named .jpg,
truncated downloads, decompression bombs, odd colour modes) ends here as a
``SkippedFile`` or a ``DecodeError``, so the rest of pixclust only ever sees
usable RGB images.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from pixclust.errors import DecodeError, UsageError
from pixclust.runs.folder import is_run_folder

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

# Twice Pillow's default warning level, which is also where Pillow itself
# refuses to open an image, so the two limits agree unless the user raises ours.
DEFAULT_MAX_PIXELS: int = 178_956_970

_HEADER_BYTES = 32

# What Pillow keeps for an RGB, RGBA or float pixel: a decode may hold this much per
# pixel of --max-pixels in any one buffer, whatever the format stores.
_BUFFER_BYTES_PER_PIXEL = 4
# No picture needs more bytes in its file than 8 a pixel (uncompressed 16-bit RGBA);
# the allowance is for metadata, layers and further frames.
_MOST_FILE_BYTES_PER_PIXEL = 8
_FILE_ALLOWANCE = 64 << 20
# Pixel data deflates to at most a little more than itself; beyond twice that plus this,
# a PNG carries something other than its picture (Pillow reads such chunks whole).
_PNG_ANCILLARY_ALLOWANCE = 16 << 20
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}

# Pillow can open far more formats; these are the ones we test and trust.
_DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

_UNSUPPORTED_FORMAT_DETAILS = {
    "HEIF": "HEIF/HEIC needs the pillow-heif plugin, which pixclust does not load; convert to JPEG or PNG",
    "AVIF": "AVIF needs the pillow-avif-plugin, which pixclust does not load; convert to JPEG or PNG",
}

# Camera raw files are TIFF inside, so sniffing would accept them, but Pillow
# only sees their embedded thumbnail; clustering that next to the JPEG twin
# would be misleading.
_CAMERA_RAW_EXTENSIONS = frozenset(
    {".arw", ".cr2", ".dng", ".nef", ".nrw", ".pef", ".sr2", ".srw", ".3fr", ".erf", ".iiq"}
)
_CAMERA_RAW_DETAIL = "camera raw files are not decoded; export them to JPEG or TIFF"

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

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})

# What Pillow raises when the bytes themselves are bad, as opposed to a bug or
# a resource problem.
_CORRUPT_DATA_ERRORS = (OSError, SyntaxError, EOFError, struct.error, zlib.error)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Discovery:
    files: list[Path]
    skipped: list[SkippedFile]


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


def _not_an_image_detail(header: bytes) -> str:
    return f"content looks like {_describe_content(header)}, not an image"


def discover_images(
    root: str | Path,
    *,
    exclude: Sequence[str | Path] = (),
    include_hidden: bool = False,
) -> Discovery:
    """Find the image files under ``root`` (a folder, walked recursively, or one file).

    Files count as candidates by extension or by content; candidates that
    cannot be used are listed in ``skipped`` with the reason.
    """
    root_path = Path(root)
    _require_readable_root(root_path)
    if not root_path.is_dir():
        # The user named this file, so say why it is unusable whatever its name.
        return _discovery_of([_examine_file(str(root_path), has_image_extension=True)])
    excluded = tuple(os.path.realpath(path) for path in exclude)
    outcomes = [
        item if isinstance(item, SkippedFile) else _examine_file(item, _has_image_extension(item))
        for item in _walk_files(str(root_path), excluded, include_hidden)
    ]
    return _discovery_of(outcomes)


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
            yield SkippedFile(dir_path, REASON_UNREADABLE, f"cannot list this folder ({_os_reason(error)})")
            continue
        for path in scan.broken_links:
            yield SkippedFile(path, REASON_BROKEN_LINK, "the link's target does not exist")
        for path in scan.special_files:
            yield SkippedFile(path, REASON_NOT_REGULAR, _not_regular_detail(path))
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


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error)


_SPECIAL_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular_detail(path: str) -> str:
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
            raise DecodeError(REASON_NOT_REGULAR, _not_regular_detail(str(path)))
        # Should the file be swapped for a FIFO after the check, a non-blocking open still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise DecodeError(REASON_UNREADABLE, f"cannot read it ({_os_reason(error)})") from error
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise DecodeError(REASON_NOT_REGULAR, _not_regular_detail(str(path)))
    return file


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
            header = file.read(_HEADER_BYTES)
    except DecodeError as error:
        return SkippedFile(path, error.reason, error.detail)
    except OSError as error:
        return SkippedFile(path, REASON_UNREADABLE, f"cannot read it ({_os_reason(error)})")
    if not header:
        return SkippedFile(path, REASON_EMPTY, "file is 0 bytes")
    image_format = sniff_format(header)
    if image_format in _UNSUPPORTED_FORMAT_DETAILS:
        return SkippedFile(path, REASON_UNSUPPORTED, _UNSUPPORTED_FORMAT_DETAILS[image_format])
    if image_format is None:
        return SkippedFile(path, REASON_NOT_IMAGE, _not_an_image_detail(header))
    return Path(path)


# Where decode_image leaves the picture's size before any draft scaling (see full_size).
_FULL_SIZE_KEY = "pixclust.full_size"


def load_rgb(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Read a file and decode it like ``decode_image``; the file is only ever read.

    The file is read as the decoder asks, never whole, and only if it is a
    regular file no larger than a picture of ``max_pixels`` could need.
    """
    with open_regular(path) as file:
        try:
            size = os.fstat(file.fileno()).st_size
            header = file.read(_HEADER_BYTES)
            file.seek(0)
        except OSError as error:
            raise DecodeError(REASON_UNREADABLE, f"cannot read the file ({_os_reason(error)})") from error
        return _decode_file(file, header, size, max_pixels, draft_size)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode image bytes into a fully loaded RGB image, upright and on white.

    ``max_pixels`` is checked against the size in the header, and against the
    blocks a TIFF decodes at once, before any pixel is decoded; Pillow's own
    decompression-bomb limit still applies above it. ``draft_size`` lets JPEGs
    decode at a reduced scale whose shorter side is still at least that many
    pixels. Every problem with the data is raised as ``DecodeError``.
    """
    return _decode_file(io.BytesIO(data), data[:_HEADER_BYTES], len(data), max_pixels, draft_size)


def _decode_file(
    file: io.BufferedIOBase, header: bytes, size: int, max_pixels: int, draft_size: int | None
) -> Image.Image:
    if draft_size is not None and draft_size < 1:
        raise UsageError(f"draft size must be a positive number of pixels, got {draft_size}")
    if not size:
        raise DecodeError(REASON_EMPTY, "file is 0 bytes")
    image_format = sniff_format(header)
    if image_format in _UNSUPPORTED_FORMAT_DETAILS:
        raise DecodeError(REASON_UNSUPPORTED, _UNSUPPORTED_FORMAT_DETAILS[image_format])
    _check_file_size(size, max_pixels)
    try:
        if image_format == "PNG":
            _check_png_size(file, header, size)
        with warnings.catch_warnings():
            # Pillow warns about big images, palette transparency and odd EXIF;
            # our own checks decide, and per-file noise would flood a large run.
            warnings.simplefilter("ignore")
            return _decode(file, max_pixels, draft_size)
    except DecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeError(REASON_TOO_LARGE, f"Pillow refuses to decode it: {error}") from error
    except UnidentifiedImageError as error:
        raise _unidentified_error(header, image_format) from error
    except _CORRUPT_DATA_ERRORS as error:
        raise DecodeError(REASON_CORRUPT, f"Pillow: {str(error) or type(error).__name__}") from error
    except Exception as error:
        raise DecodeError(REASON_DECODE_FAILED, f"{type(error).__name__}: {error}") from error


def _check_file_size(size: int, max_pixels: int) -> None:
    most = max_pixels * _MOST_FILE_BYTES_PER_PIXEL + _FILE_ALLOWANCE
    if size > most:
        raise DecodeError(
            REASON_TOO_LARGE,
            f"the file is {size:,} bytes, more than a picture of --max-pixels {max_pixels:,} needs ({most:,});"
            " raise --max-pixels if the file is trusted",
        )


def _check_png_size(file: io.BufferedIOBase, header: bytes, size: int) -> None:
    """Refuse a PNG far larger than its declared pixels (an animated one is held to ``_check_file_size`` only)."""
    if len(header) < 26 or header[12:16] != b"IHDR":
        return  # Pillow says what is wrong with it
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", header[16:26])
    row_bytes = math.ceil(width * _PNG_CHANNELS.get(colour_type, 4) * bit_depth / 8)
    pixel_bytes = height * (1 + row_bytes)
    if size <= 2 * pixel_bytes + _PNG_ANCILLARY_ALLOWANCE or _is_animated_png(file):
        return
    raise DecodeError(
        REASON_TOO_LARGE,
        f"the file is {size:,} bytes for a {width}x{height} picture of {pixel_bytes:,} bytes;"
        " the rest is not the picture",
    )


def _is_animated_png(file: io.BufferedIOBase) -> bool:
    """Whether an acTL chunk comes before the pixels; chunk headers are read, their data skipped."""
    position = 8
    try:
        while True:
            file.seek(position)
            chunk = file.read(8)
            if len(chunk) < 8 or chunk[4:] in (b"IDAT", b"IEND"):
                return False
            if chunk[4:] == b"acTL":
                return True
            position += 12 + int.from_bytes(chunk[:4], "big")
    finally:
        file.seek(0)


def _unidentified_error(header: bytes, image_format: str | None) -> DecodeError:
    if image_format is None:
        return DecodeError(REASON_NOT_IMAGE, _not_an_image_detail(header))
    return DecodeError(REASON_CORRUPT, f"starts like a {image_format} file but its header is unreadable")


def full_size(image: Image.Image) -> tuple[int, int]:
    """The upright width and height of the file's picture, also when ``draft_size`` decoded it smaller."""
    width, height = image.info.get(_FULL_SIZE_KEY, image.size)
    return int(width), int(height)


def _decode(file: io.BufferedIOBase, max_pixels: int, draft_size: int | None) -> Image.Image:
    with Image.open(file, formats=_DECODABLE_FORMATS) as image:
        _check_declared_size(image, max_pixels)
        if image.format == "TIFF":
            _check_tiff_blocks(image, max_pixels)
        declared = image.size
        if draft_size is not None:
            # Only JPEG implements draft (DCT scaling); Pillow ignores it elsewhere.
            # A square request is right: Pillow picks the largest scale that
            # keeps both sides, hence the shorter one, at least draft_size.
            image.draft("RGB", (draft_size, draft_size))
        # Load here so truncation and decoder errors surface now, not in a caller.
        image.load()
        loaded = image.size
        rgb = _to_rgb(_upright(image))
        # EXIF orientation may have turned the picture a quarter; the full size turns with it.
        rgb.info[_FULL_SIZE_KEY] = declared if rgb.size == loaded else declared[::-1]
        return rgb


def _check_declared_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width == 0 or height == 0:
        raise DecodeError(REASON_CORRUPT, f"header declares an empty {width}x{height} image")
    if width * height > max_pixels:
        raise DecodeError(
            REASON_TOO_LARGE,
            f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,};"
            " raise --max-pixels if the file is trusted",
        )


def _check_tiff_blocks(image: Image.Image, max_pixels: int) -> None:
    """Refuse a TIFF whose tile or strip, which libtiff decodes whole, is over the picture's limits.

    A tile's size is its own, whatever the picture's: a 16x16 picture may
    declare one 16384x16384 tile, 807 MB decoded from a 780 KB file.
    """
    tags = image.tag_v2
    width, height = image.size
    tile_width, tile_length = tags.get(TiffImagePlugin.TILEWIDTH), tags.get(TiffImagePlugin.TILELENGTH)
    if isinstance(tile_width, int) and isinstance(tile_length, int):
        block, kind = (tile_width, tile_length), "tile"
    else:
        rows = tags.get(TiffImagePlugin.ROWSPERSTRIP, height)
        block, kind = (width, min(rows, height) if isinstance(rows, int) else height), "strip"
    bits = tags.get(TiffImagePlugin.BITSPERSAMPLE, 1)
    samples = tags.get(TiffImagePlugin.SAMPLESPERPIXEL, 1)
    bytes_per_pixel = max(bits if isinstance(bits, tuple) else (bits,)) * max(samples, 1) / 8
    pixels = block[0] * block[1]
    if pixels > max_pixels or pixels * bytes_per_pixel > max_pixels * _BUFFER_BYTES_PER_PIXEL:
        raise DecodeError(
            REASON_TOO_LARGE,
            f"it is decoded one {block[0]}x{block[1]} {kind} at a time ({pixels:,} pixels of"
            f" {bytes_per_pixel:g} bytes), over what --max-pixels {max_pixels:,} allows;"
            " raise --max-pixels if the file is trusted",
        )


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # A damaged EXIF block should cost us the rotation, not the picture.
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _narrowed(image, _sixteen_bit_to_uint8)
    elif image.mode == "I":
        image = _narrowed(image, _int32_converter(image))
    elif image.mode == "F":
        image = _narrowed(image, _float_converter(image))
    if image.has_transparency_data:
        return _onto_white(image.convert("RGBA"))
    return image.convert("RGB")


def _onto_white(image: Image.Image) -> Image.Image:
    background = Image.new("RGB", image.size, "white")
    background.paste(image, mask=image.getchannel("A"))
    return background


# High-bit-depth and float pictures are narrowed to 8 bits a band of rows at a time: whole-picture
# float64 copies took 25 to 40 bytes a pixel, several times the picture itself.
_BAND_PIXELS = 1 << 18

Converter = Callable[[np.ndarray], np.ndarray]


def _bands(image: Image.Image) -> Iterator[tuple[slice, np.ndarray]]:
    rows = max(1, _BAND_PIXELS // image.width)
    for top in range(0, image.height, rows):
        bottom = min(top + rows, image.height)
        yield slice(top, bottom), np.asarray(image.crop((0, top, image.width, bottom)))


def _narrowed(image: Image.Image, convert: Converter) -> Image.Image:
    narrow = np.empty((image.height, image.width), np.uint8)
    for rows, band in _bands(image):
        narrow[rows] = convert(band)
    return Image.fromarray(narrow)


def _finite_range(image: Image.Image) -> tuple[float, float] | None:
    low, high = math.inf, -math.inf
    for _, band in _bands(image):
        finite = band[np.isfinite(band)]
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
    return (low, high) if low <= high else None


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    # 65535 / 257 == 255 exactly, so the full 16-bit range maps onto 8 bits; + 128 rounds to nearest.
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _int32_converter(image: Image.Image) -> Converter:
    # Mode "I" holds 8-bit, 16-bit or arbitrary 32-bit data; guess which from the values.
    low, high = image.getextrema()
    if low >= 0 and high <= 255:
        return lambda values: values.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return _sixteen_bit_to_uint8
    return _stretcher(low, high)


def _float_converter(image: Image.Image) -> Converter:
    value_range = _finite_range(image)
    return _stretcher(*value_range) if value_range else _black


def _black(values: np.ndarray) -> np.ndarray:
    return np.zeros(values.shape, dtype=np.uint8)


def _stretcher(low: float, high: float) -> Converter:
    if high == low:
        # No contrast to stretch; black says "nothing here" without inventing detail.
        return _black
    scale = 255 / (float(high) - float(low))

    def stretch(values: np.ndarray) -> np.ndarray:
        scaled = (values.astype(np.float64) - low) * scale
        scaled[~np.isfinite(values)] = 0
        return np.round(scaled).astype(np.uint8)

    return stretch
