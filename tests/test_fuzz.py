"""Property: whatever bytes a file holds, ``decode_image`` gives an RGB picture or a ``DecodeError``.

Hypothesis mutates real files of every supported format (truncation, byte
flips, one format's header spliced onto another's body, inserted and deleted
runs) and checks that nothing else ever escapes and that no file takes long:
decoding work is bounded by the pixel budget, which the declared size is
checked against before any pixel is decoded.
"""

from __future__ import annotations

from datetime import timedelta

from corpus import encode, exif_rotated_jpeg, quadrants, ycck_jpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixclust.embedding.decode import decode_image
from pixclust.embedding.files import (
    REASON_CORRUPT,
    REASON_DECODE_FAILED,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_UNSUPPORTED,
)
from pixclust.errors import DecodeError

# Small, so that a header mutated to declare a huge picture is refused rather than decoded for seconds.
MAX_PIXELS = 1 << 22
REASONS = {REASON_CORRUPT, REASON_DECODE_FAILED, REASON_EMPTY, REASON_NOT_IMAGE, REASON_TOO_LARGE, REASON_UNSUPPORTED}


def seed_files() -> dict[str, bytes]:
    """One small real file per format and per structure worth breaking (progressive scans, EXIF, palettes, frames)."""
    picture = quadrants(24, 16)
    frames = {"save_all": True, "append_images": [quadrants(24, 16).transpose(Image.Transpose.ROTATE_180)]}
    return {
        "jpeg": encode(picture, "JPEG"),
        "progressive jpeg": encode(picture, "JPEG", progressive=True),
        "exif jpeg": exif_rotated_jpeg(picture, 6),
        "ycck jpeg": ycck_jpeg(picture.convert("CMYK")),
        "png": encode(picture, "PNG"),
        "palette png": encode(picture.quantize(4), "PNG", transparency=0),
        "grey16 png": encode(picture.convert("I;16"), "PNG"),
        "gif": encode(picture, "GIF", **frames),
        "bmp": encode(picture, "BMP"),
        "rle bmp": encode(picture.quantize(4), "BMP", compression=1),
        "tiff": encode(picture, "TIFF"),
        "deflate tiff": encode(picture, "TIFF", compression="tiff_deflate"),
        "float tiff": encode(picture.convert("F"), "TIFF"),
        "webp": encode(picture, "WEBP"),
        "lossless webp": encode(picture, "WEBP", lossless=True, **frames),
    }


SEEDS = seed_files()


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(sorted(SEEDS.values()))))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "splice", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
        elif kind == "splice":
            donor = draw(st.sampled_from(sorted(SEEDS.values())))
            data[:at] = donor[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def assert_picture_or_decode_error(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except DecodeError as error:
        assert error.reason in REASONS and error.detail
        return
    assert image.mode == "RGB"
    assert 0 < image.width * image.height <= MAX_PIXELS
    image.getpixel((0, 0))


def test_every_seed_file_decodes() -> None:
    for name, data in SEEDS.items():
        assert decode_image(data).size in {(24, 16), (16, 24)}, name


# No example database: tests write nothing into the checkout, and a failure prints its bytes anyway.
@settings(max_examples=3000, deadline=timedelta(seconds=3), database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutated_files_give_a_picture_or_a_decode_error(data: bytes) -> None:
    assert_picture_or_decode_error(data)


@settings(max_examples=500, deadline=timedelta(seconds=3), database=None)
@given(st.binary(max_size=256), st.sampled_from(sorted(SEEDS.values())))
def test_arbitrary_bytes_behind_a_real_header_give_a_picture_or_a_decode_error(tail: bytes, seed: bytes) -> None:
    assert_picture_or_decode_error(seed[:64] + tail)
