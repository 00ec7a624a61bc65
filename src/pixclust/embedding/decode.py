"""Decoding an image file into a plain RGB picture, within a pixel budget.

Everything a file can throw at us (truncated downloads, decompression bombs,
odd colour modes, 16-bit and float pictures) ends here as a ``DecodeError`` or
an upright 8-bit RGB image, so the rest of pixclust only sees usable pictures.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from pixclust.embedding.files import (
    HEADER_BYTES,
    REASON_CORRUPT,
    REASON_DECODE_FAILED,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    decoder_available,
    not_an_image_detail,
    open_regular,
    os_reason,
    sniff_format,
    unsupported_detail,
)
from pixclust.errors import DecodeError, UsageError

# Twice Pillow's default warning level, which is also where Pillow itself
# refuses to open an image, so the two limits agree unless the user raises ours.
DEFAULT_MAX_PIXELS: int = 178_956_970


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


# Pillow can open far more formats; these are the ones we test and trust, and, where their decoder is
# installed, HEIF (pillow-heif) and AVIF (decodable_formats).
_DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


# What Pillow raises when the bytes themselves are bad, as opposed to a bug or
# a resource problem.
_CORRUPT_DATA_ERRORS = (OSError, SyntaxError, EOFError, struct.error, zlib.error)


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
            header = file.read(HEADER_BYTES)
            file.seek(0)
        except OSError as error:
            raise DecodeError(REASON_UNREADABLE, f"cannot read the file ({os_reason(error)})") from error
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
    return _decode_file(io.BytesIO(data), data[:HEADER_BYTES], len(data), max_pixels, draft_size)


def _decode_file(
    file: io.BufferedIOBase, header: bytes, size: int, max_pixels: int, draft_size: int | None
) -> Image.Image:
    if draft_size is not None and draft_size < 1:
        raise UsageError(f"draft size must be a positive number of pixels, got {draft_size}")
    if not size:
        raise DecodeError(REASON_EMPTY, "file is 0 bytes")
    image_format = sniff_format(header)
    detail = unsupported_detail(image_format)
    if detail:
        raise DecodeError(REASON_UNSUPPORTED, detail)
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
        return DecodeError(REASON_NOT_IMAGE, not_an_image_detail(header))
    return DecodeError(REASON_CORRUPT, f"starts like a {image_format} file but its header is unreadable")


@functools.cache
def decodable_formats() -> tuple[str, ...]:
    """The formats decoded here: the trusted ones, and HEIF and AVIF where their decoders are installed.

    pillow-heif registers its opener with Pillow on first use (it then also reads the
    HEIC's EXIF, so its orientation is honoured like a JPEG's).
    """
    optional = tuple(name for name in ("HEIF", "AVIF") if decoder_available(name))
    if "HEIF" in optional:
        import pillow_heif

        pillow_heif.register_heif_opener()
    return _DECODABLE_FORMATS + optional


def full_size(image: Image.Image) -> tuple[int, int]:
    """The upright width and height of the file's picture, also when ``draft_size`` decoded it smaller."""
    width, height = image.info.get(_FULL_SIZE_KEY, image.size)
    return int(width), int(height)


def _decode(file: io.BufferedIOBase, max_pixels: int, draft_size: int | None) -> Image.Image:
    with Image.open(file, formats=decodable_formats()) as image:
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
