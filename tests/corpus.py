"""A folder of every kind of awkward file pixclust must survive, built at run time.

``build_corpus(root)`` writes the files and returns what a run must make of
each one: used, at a known size and looking like a known picture (so colour
and orientation are checked, not only "it decoded"), or skipped for a known
reason. Pictures are four flat colour quadrants, so a wrong rotation, a lost
colour channel or a black transparent area all show.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pixclust.embedding.files import (
    REASON_BROKEN_LINK,
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
)

QUADRANT_COLOURS = ((220, 30, 30), (30, 200, 60), (40, 60, 220), (240, 220, 40))
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
LONGEST_NAME = "é" * 125 + "x.png"
# What Pillow must do to a stored picture to show it upright, per EXIF orientation; the
# corpus stores the inverse, so a decoder that ignores the tag shows the wrong picture.
_STORED_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Usable:
    """A file the run must use: ``picture`` is how it must look once decoded (RGB, upright, on white)."""

    picture: Image.Image
    tolerance: float = 0.04

    @property
    def size(self) -> tuple[int, int]:
        return self.picture.size


@dataclass
class Corpus:
    root: Path
    usable: dict[str, Usable] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    # Made unreadable (mode 000) only while a run reads the corpus, so the
    # test itself can hash them before and after.
    unreadable: list[Path] = field(default_factory=list)


def quadrants(width: int, height: int, colours: tuple[tuple[int, ...], ...] = QUADRANT_COLOURS) -> Image.Image:
    """An RGB picture split into four flat colours: top-left, top-right, bottom-left, bottom-right."""
    xs = np.arange(width) >= width / 2
    ys = np.arange(height) >= height / 2
    index = ys[:, None].astype(int) * 2 + xs[None, :].astype(int)
    return Image.fromarray(np.asarray(colours, dtype=np.uint8)[index])


def grey_quadrants(width: int, height: int, levels: tuple[float, float, float, float], dtype: str) -> np.ndarray:
    xs = np.arange(width) >= width / 2
    ys = np.arange(height) >= height / 2
    return np.asarray(levels, dtype=dtype)[ys[:, None].astype(int) * 2 + xs[None, :].astype(int)]


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written byte by byte, for what Pillow cannot write (16-bit RGB) or must not (a bomb)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def tiled_tiff(width: int, height: int, tile: int, *, bits: int = 8) -> bytes:
    """A black deflated RGB TIFF of width x height in one tile x tile tile, written by hand: Pillow writes no tiles.

    libtiff decodes a tile whole whatever the picture's size, so a tile far
    larger than the picture is a memory bomb in a small file.
    """
    pixels = zlib.compress(bytes(tile * tile * 3 * bits // 8), 9)
    entries = 11
    bits_at = 8 + 2 + entries * 12 + 4
    pixels_at = bits_at + 6
    # (tag, type, count, value): size, 8-bit samples, deflate, RGB, one plane, the tile and where its bytes are.
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, bits_at),
        (259, 3, 1, 8),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, 1, pixels_at),
        (325, 4, 1, len(pixels)),
    ]
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<3H", bits, bits, bits) + pixels


def as_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(grey).astype(np.uint8)).convert("RGB")


def exif_rotated_jpeg(picture: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(picture.transpose(_STORED_FOR_ORIENTATION[orientation]), "JPEG", quality=95, exif=exif)


def ycck_jpeg(cmyk: Image.Image) -> bytes:
    """A YCCK JPEG (Adobe transform 2), the form Photoshop writes CMYK in; Pillow only writes plain CMYK.

    libjpeg turns stored YCC into RGB and inverts that into CMY; Pillow then
    undoes Adobe's inversion. So store the YCbCr of the wanted C, M, Y as if
    they were R, G, B, invert for Pillow's writer, and flip the transform byte.
    """
    c, m, y, k = cmyk.split()
    ycc = np.asarray(Image.merge("RGB", (c, m, y)).convert("YCbCr"), dtype=np.uint8)
    stored = np.dstack([255 - ycc, np.asarray(k)])
    data = bytearray(encode(Image.fromarray(stored, "CMYK"), "JPEG", quality=100))
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2
    return bytes(data)


def sixteen_bit_rgb_png(picture: Image.Image) -> bytes:
    wide = np.asarray(picture, dtype=">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)
    return handmade_png(picture.width, picture.height, 16, 2, rows)


def animated(image_format: str, first: Image.Image, second: Image.Image) -> bytes:
    return encode(first, image_format, save_all=True, append_images=[second], duration=100, loop=0, lossless=True)


def _usable_files() -> dict[str, tuple[bytes, Image.Image]]:
    """Relative path -> (file bytes, how it must look when decoded)."""
    picture = quadrants(48, 32)
    cmyk_target = Image.merge(
        "CMYK",
        [
            Image.fromarray(grey_quadrants(48, 32, levels, "uint8"))
            for levels in ((0, 200, 20, 120), (210, 0, 40, 60), (10, 180, 220, 0), (90, 20, 0, 30))
        ],
    )
    grey16 = grey_quadrants(40, 24, (0, 20000, 40000, 65535), "uint16")
    floats = grey_quadrants(40, 24, (-1.0, 0.0, 0.5, 3.0), "float32")
    palette = picture.quantize(4)
    transparent_index = palette.getpixel((0, 0))
    on_white = np.asarray(picture).copy()
    on_white[:16, :24] = WHITE
    grey_alpha = Image.merge(
        "LA", (Image.new("L", (30, 20), 40), Image.fromarray(grey_quadrants(30, 20, (0, 255, 128, 255), "uint8")))
    )
    # 40 at alpha 128 over white: 40*128/255 + 255*127/255.
    la_expected = as_rgb(grey_quadrants(30, 20, (255, 40, 40 * 128 / 255 + 255 * 127 / 255, 40), "float64"))
    one_bit = Image.fromarray(grey_quadrants(32, 32, (0, 255, 255, 0), "uint8")).convert("1")
    return {
        "plain/photo.jpg": (encode(picture, "JPEG", quality=95), picture),
        "plain/photo.png": (encode(picture, "PNG"), picture),
        "plain/photo.webp": (encode(picture, "WEBP", lossless=True), picture),
        "plain/photo.bmp": (encode(picture, "BMP"), picture),
        "plain/photo.tif": (encode(picture, "TIFF"), picture),
        "wrong-extension/really-a-png.jpg": (encode(quadrants(36, 20), "PNG"), quadrants(36, 20)),
        "wrong-extension/really-a-jpeg.png": (encode(quadrants(20, 36), "JPEG", quality=95), quadrants(20, 36)),
        "wrong-extension/no-extension": (encode(quadrants(24, 24), "WEBP", lossless=True), quadrants(24, 24)),
        "colour/cmyk.jpg": (encode(cmyk_target, "JPEG", quality=95), cmyk_target.convert("RGB")),
        "colour/ycck.jpg": (ycck_jpeg(cmyk_target), cmyk_target.convert("RGB")),
        "colour/grey16.png": (encode(Image.fromarray(grey16), "PNG"), as_rgb(grey16 / 257)),
        "colour/grey16.tif": (encode(Image.fromarray(grey16), "TIFF"), as_rgb(grey16 / 257)),
        "colour/rgb16.png": (sixteen_bit_rgb_png(picture), picture),
        "colour/float32.tif": (encode(Image.fromarray(floats, "F"), "TIFF"), as_rgb((floats + 1) / 4 * 255)),
        "colour/palette-transparent.png": (
            encode(palette, "PNG", transparency=transparent_index),
            Image.fromarray(on_white),
        ),
        "colour/grey-alpha.png": (encode(grey_alpha, "PNG"), la_expected),
        "colour/one-bit.png": (encode(one_bit, "PNG"), one_bit.convert("RGB")),
        "colour/one-bit.bmp": (encode(one_bit, "BMP"), one_bit.convert("RGB")),
        "animated/two-frames.gif": (
            animated("GIF", quadrants(32, 32), Image.new("RGB", (32, 32), WHITE)),
            quadrants(32, 32),
        ),
        "animated/two-frames.webp": (
            animated("WEBP", quadrants(32, 32), Image.new("RGB", (32, 32), WHITE)),
            quadrants(32, 32),
        ),
        "exif/orientation-3.jpg": (exif_rotated_jpeg(picture, 3), picture),
        "exif/orientation-6.jpg": (exif_rotated_jpeg(picture, 6), picture),
        "exif/orientation-8.jpg": (exif_rotated_jpeg(picture, 8), picture),
        "shapes/1x10000.png": (encode(quadrants(1, 10000), "PNG"), quadrants(1, 10000)),
        "shapes/10000x1.png": (encode(quadrants(10000, 1), "PNG"), quadrants(10000, 1)),
        "shapes/1x1.png": (
            encode(Image.new("RGB", (1, 1), QUADRANT_COLOURS[2]), "PNG"),
            Image.new("RGB", (1, 1), QUADRANT_COLOURS[2]),
        ),
        "names/my holiday photo.png": (encode(quadrants(30, 30), "PNG"), quadrants(30, 30)),
        "names/фото 日本 café.png": (encode(quadrants(31, 30), "PNG"), quadrants(31, 30)),
        "names/line\nbreak.png": (encode(quadrants(32, 30), "PNG"), quadrants(32, 30)),
        "names/-starts-with-dash.png": (encode(quadrants(33, 30), "PNG"), quadrants(33, 30)),
        # 255 bytes, the most a name can have: two in one cluster need "~2" and must still fit.
        f"twins/long-a/{LONGEST_NAME}": (encode(quadrants(34, 34), "PNG"), quadrants(34, 34)),
        f"twins/long-b/{LONGEST_NAME}": (encode(quadrants(34, 34), "PNG"), quadrants(34, 34)),
        "twins/a/same-name.png": (encode(quadrants(40, 20), "PNG"), quadrants(40, 20)),
        "twins/b/same-name.png": (encode(quadrants(20, 40), "PNG"), quadrants(20, 40)),
        "locked/readable-neighbour.png": (encode(quadrants(26, 26), "PNG"), quadrants(26, 26)),
    }


def _skipped_files() -> dict[str, tuple[bytes, str]]:
    """Relative path -> (file bytes, the reason errors.csv must give)."""
    noisy = Image.fromarray(np.random.default_rng(7).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    jpeg, png, webp = encode(noisy, "JPEG"), encode(noisy, "PNG"), encode(noisy, "WEBP")
    tiff = encode(noisy, "TIFF", compression="tiff_deflate")
    random_bytes = b"\x00\x17" + np.random.default_rng(8).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    gif_bomb = bytearray(encode(quadrants(8, 8), "GIF"))
    gif_bomb[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen size, which Pillow takes as the image size
    heic = struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 16
    return {
        "broken/truncated.jpg": (jpeg[: len(jpeg) // 2], REASON_CORRUPT),
        "broken/truncated.png": (png[: len(png) // 2], REASON_CORRUPT),
        "broken/header-only.png": (png[:40], REASON_CORRUPT),
        "broken/truncated.tif": (tiff[: len(tiff) // 2], REASON_CORRUPT),
        "broken/truncated.webp": (webp[: len(webp) // 2], REASON_CORRUPT),
        "broken/empty.jpg": (b"", REASON_EMPTY),
        "broken/empty.png": (b"", REASON_EMPTY),
        "broken/random-bytes.jpg": (random_bytes, REASON_NOT_IMAGE),
        "broken/random-bytes.webp": (random_bytes[::-1], REASON_NOT_IMAGE),
        "impostors/notes.png": (b"shopping list: milk, eggs\n", REASON_NOT_IMAGE),
        "impostors/page.jpg": (b"<!DOCTYPE html><html><body>404</body></html>\n", REASON_NOT_IMAGE),
        "impostors/document.webp": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", REASON_NOT_IMAGE),
        "impostors/archive.gif": (b"PK\x03\x04" + b"\x00" * 60, REASON_NOT_IMAGE),
        "broken/header-only.heic": (heic, REASON_CORRUPT),
        "impostors/DSC_0001.NEF": (tiff, REASON_UNSUPPORTED),
        "bombs/huge.png": (handmade_png(100_000, 100_000, 8, 2, b"\x00" * 100), REASON_TOO_LARGE),
        "bombs/huge.gif": (bytes(gif_bomb), REASON_TOO_LARGE),
        "locked/unreadable.jpg": (encode(quadrants(16, 16), "JPEG"), REASON_UNREADABLE),
    }


def _links(root: Path) -> dict[str, str]:
    """Make the symlinks; returns relative path -> reason for those that must be reported."""
    os.symlink("does-not-exist.jpg", root / "links" / "dangling.jpg")
    os.symlink("self-loop.jpg", root / "links" / "self-loop.jpg")
    # These must be walked without looping and without reporting a file twice.
    os.symlink("..", root / "links" / "loop-to-root")
    os.symlink("../plain/photo.png", root / "links" / "second-name-for-photo.png")
    return {"links/dangling.jpg": REASON_BROKEN_LINK, "links/self-loop.jpg": REASON_BROKEN_LINK}


def _write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def build_corpus(root: Path) -> Corpus:
    """Write the awkward-file corpus under ``root`` and say what a run must make of each file."""
    corpus = Corpus(root)
    for relative, (data, picture) in _usable_files().items():
        _write(root, relative, data)
        corpus.usable[relative] = Usable(picture)
    for relative, (data, reason) in _skipped_files().items():
        _write(root, relative, data)
        corpus.skipped[relative] = reason
    (root / "links").mkdir()
    corpus.skipped.update(_links(root))
    locked_folder = _write(root, "locked/folder/inside.png", encode(quadrants(8, 8), "PNG")).parent
    corpus.skipped["locked/folder"] = REASON_UNREADABLE
    corpus.unreadable = [root / "locked" / "unreadable.jpg", locked_folder]
    return corpus


def looks_like(vector: np.ndarray, usable: Usable, side: int) -> float:
    """Mean absolute difference (0..1) between a ``pixels``-model vector and the expected picture."""
    expected = np.asarray(usable.picture.resize((side, side), Image.Resampling.BOX), dtype=np.float32) / 255
    return float(np.abs(vector.reshape(side, side, 3) - expected).mean())
