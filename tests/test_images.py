from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixclust.embedding import files
from pixclust.embedding.decode import DEFAULT_MAX_PIXELS, decode_image, full_size, load_rgb
from pixclust.embedding.discover import discover_images
from pixclust.embedding.files import (
    IMAGE_EXTENSIONS,
    REASON_BROKEN_LINK,
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    SkippedFile,
    sniff_format,
)
from pixclust.errors import DecodeError, UsageError

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
DECODABLE_FORMATS = ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]

# A minimal HEIC header: ftyp box with major brand heic and compatible brands.
HEIC_HEADER = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 16
AVIF_HEADER = struct.pack(">I", 28) + b"ftypavif" + b"\x00\x00\x00\x00" + b"avifmif1miaf" + b"\x00" * 16


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    checksum = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", checksum)


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def rgb_at(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    pixel = image.getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel


def names(paths: list[Path], root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def skipped_by_name(skipped: list[SkippedFile]) -> dict[str, SkippedFile]:
    return {Path(item.path).name: item for item in skipped}


# --- sniff_format -----------------------------------------------------------


@pytest.mark.parametrize("image_format", DECODABLE_FORMATS)
def test_sniff_format_recognises_what_pillow_writes(image_format: str) -> None:
    data = encode(Image.new("RGB", (4, 4), RED), image_format)
    assert sniff_format(data[:32]) == image_format


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (HEIC_HEADER, "HEIF"),
        (AVIF_HEADER, "AVIF"),
        (struct.pack(">I", 24) + b"ftypmif1\x00\x00\x00\x00mif1avif", "AVIF"),
        (struct.pack(">I", 24) + b"ftypisom\x00\x00\x00\x00isomavc1", None),  # an MP4 video
        (b"BMW service notes, 2021 edition\n", None),
        (b"Hello, this is plain text.\n", None),
        (b"", None),
        (b"\xff\xd8", None),
    ],
)
def test_sniff_format_edge_cases(header: bytes, expected: str | None) -> None:
    assert sniff_format(header) == expected


def test_image_extensions_are_lower_case_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".avif"} <= IMAGE_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


# --- discover_images ----------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "image_format"),
    [
        ("photo.jpg", "JPEG"),
        ("photo.jpeg", "JPEG"),
        ("shot.png", "PNG"),
        ("web.webp", "WEBP"),
        ("old.bmp", "BMP"),
        ("scan.tif", "TIFF"),
        ("anim.gif", "GIF"),
    ],
)
def test_each_format_is_found_and_decoded(tmp_path: Path, file_name: str, image_format: str) -> None:
    write(tmp_path / file_name, encode(Image.new("RGB", (40, 30), RED), image_format))

    discovery = discover_images(tmp_path)

    assert names(discovery.files, tmp_path) == [file_name]
    assert discovery.skipped == []
    image = load_rgb(discovery.files[0])
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    assert_close(rgb_at(image, 20, 15), RED)


def test_images_are_recognised_by_content_whatever_their_name(tmp_path: Path) -> None:
    write(tmp_path / "really_png.jpg", encode(Image.new("RGB", (8, 6), BLUE), "PNG"))
    write(tmp_path / "photo", encode(Image.new("RGB", (8, 6), RED), "JPEG"))
    write(tmp_path / "camera.dat", encode(Image.new("RGB", (8, 6), RED), "JPEG"))

    discovery = discover_images(tmp_path)

    assert names(discovery.files, tmp_path) == ["camera.dat", "photo", "really_png.jpg"]
    assert_close(rgb_at(load_rgb(tmp_path / "really_png.jpg"), 3, 3), BLUE)
    assert_close(rgb_at(load_rgb(tmp_path / "photo"), 3, 3), RED)


def test_non_images_without_image_extension_are_ignored_silently(tmp_path: Path) -> None:
    write(tmp_path / "README.txt", b"Holiday pictures, 2023\n")
    write(tmp_path / "tool.py", b"print('hi')\n")
    write(tmp_path / "empty_notes", b"")
    write(tmp_path / "data.bin", bytes(range(256)))

    discovery = discover_images(tmp_path)

    assert discovery.files == []
    assert discovery.skipped == []


@pytest.mark.parametrize(
    ("content", "described_as"),
    [
        (b"just some notes in a text file\n", "text"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "zip"),
        (bytes(range(32)), "unknown binary"),
    ],
)
def test_image_extension_with_other_content_is_reported(tmp_path: Path, content: bytes, described_as: str) -> None:
    write(tmp_path / "fake.png", content)

    discovery = discover_images(tmp_path)

    assert discovery.files == []
    [skipped] = discovery.skipped
    assert skipped.path == str(tmp_path / "fake.png")
    assert skipped.reason == REASON_NOT_IMAGE
    assert described_as in skipped.detail


def test_empty_image_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "zero.jpg", b"")

    [skipped] = discover_images(tmp_path).skipped

    assert skipped.reason == REASON_EMPTY
    assert skipped.detail == "file is 0 bytes"


def test_heif_and_avif_without_their_decoders_are_reported_with_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "decoder_available", lambda image_format: False)
    write(tmp_path / "iphone.heic", HEIC_HEADER)
    write(tmp_path / "exported_heic.jpg", HEIC_HEADER)
    write(tmp_path / "modern.avif", AVIF_HEADER)

    discovery = discover_images(tmp_path)

    assert discovery.files == []
    by_name = skipped_by_name(discovery.skipped)
    assert {item.reason for item in by_name.values()} == {REASON_UNSUPPORTED}
    assert "pip install 'pixclust[heif]'" in by_name["iphone.heic"].detail
    assert "pillow-heif" in by_name["exported_heic.jpg"].detail
    assert "avif" in by_name["modern.avif"].detail.lower()
    with pytest.raises(DecodeError, match="pillow-heif"):
        load_rgb(tmp_path / "iphone.heic")


def photo_turned_by_exif(image_format: str) -> tuple[Image.Image, bytes]:
    """A real photo (scikit-image's astronaut, 400 wide and 512 high) and its file, EXIF saying 'turn 90 degrees'."""
    from skimage import data

    photo = Image.fromarray(np.ascontiguousarray(data.astronaut()[:, :400]))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the picture is shown turned 90 degrees clockwise
    return photo, encode(photo, image_format, exif=exif.tobytes(), quality=92)


@pytest.mark.parametrize("image_format", ["HEIF", "AVIF"])
def test_phone_formats_decode_upright(tmp_path: Path, image_format: str) -> None:
    """HEIC (pillow-heif) and AVIF (Pillow) photos are found, decoded and turned as their EXIF says, like a JPEG."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    photo, data = photo_turned_by_exif(image_format)
    path = write(tmp_path / f"phone.{'heic' if image_format == 'HEIF' else 'avif'}", data)
    # Named like a JPEG, a HEIC is still found by its content.
    write(tmp_path / "named_like.jpg", data)

    assert sorted(p.name for p in discover_images(tmp_path).files) == sorted(["named_like.jpg", path.name])
    decoded = load_rgb(path)
    upright = photo.transpose(Image.Transpose.ROTATE_270)
    assert decoded.size == upright.size == (512, 400)
    difference = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(upright, dtype=np.int16))
    assert difference.mean() < 6


def test_camera_raw_files_are_reported_not_decoded(tmp_path: Path) -> None:
    write(tmp_path / "DSC_0001.NEF", encode(Image.new("RGB", (8, 8), RED), "TIFF"))

    discovery = discover_images(tmp_path)

    assert discovery.files == []
    assert [item.reason for item in discovery.skipped] == [REASON_UNSUPPORTED]


def test_broken_symlink_is_reported(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "does_not_exist.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "nothing.txt")

    discovery = discover_images(tmp_path)

    assert discovery.files == []
    assert [(Path(item.path).name, item.reason) for item in discovery.skipped] == [
        ("gone.jpg", REASON_BROKEN_LINK),
        ("loop.jpg", REASON_BROKEN_LINK),
    ]


def test_symlinked_files_and_dirs_are_followed_once_and_loops_end(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "a" / "one.png", encode(Image.new("RGB", (4, 4), RED), "PNG"))
    write(tmp_path / "outside" / "two.png", encode(Image.new("RGB", (4, 4), BLUE), "PNG"))
    (root / "a" / "back_to_root").symlink_to(root)  # a loop through the parent
    (root / "b").mkdir()
    (root / "b" / "to_a").symlink_to(root / "a")  # a second way into a
    (root / "c").symlink_to(tmp_path / "outside")
    (root / "one_again.png").symlink_to(root / "a" / "one.png")

    start = time.monotonic()
    discovery = discover_images(root)

    assert time.monotonic() - start < 5
    assert names(discovery.files, root) == ["a/one.png", "c/two.png"]
    assert discovery.skipped == []


def test_hidden_files_and_folders_are_skipped_unless_asked(tmp_path: Path) -> None:
    png = encode(Image.new("RGB", (4, 4), RED), "PNG")
    write(tmp_path / "visible.png", png)
    write(tmp_path / ".hidden.png", png)
    write(tmp_path / ".cache" / "thumb.png", png)

    assert names(discover_images(tmp_path).files, tmp_path) == ["visible.png"]
    assert names(discover_images(tmp_path, include_hidden=True).files, tmp_path) == [
        ".cache/thumb.png",
        ".hidden.png",
        "visible.png",
    ]


def test_hidden_root_folder_is_still_walked(tmp_path: Path) -> None:
    root = tmp_path / ".photos"
    write(root / "a.png", encode(Image.new("RGB", (4, 4), RED), "PNG"))

    assert names(discover_images(root).files, root) == ["a.png"]


def test_exclude_skips_the_run_folder_inside_root(tmp_path: Path) -> None:
    png = encode(Image.new("RGB", (4, 4), RED), "PNG")
    write(tmp_path / "keep.png", png)
    write(tmp_path / "pixclust-out" / "thumbs" / "keep.png", png)
    write(tmp_path / "other" / "skip_me.png", png)
    write(tmp_path / "other" / "keep_too.png", png)

    discovery = discover_images(tmp_path, exclude=[tmp_path / "pixclust-out", str(tmp_path / "other" / "skip_me.png")])

    assert names(discovery.files, tmp_path) == ["keep.png", "other/keep_too.png"]


def test_discovery_order_is_sorted_and_repeatable(tmp_path: Path) -> None:
    png = encode(Image.new("RGB", (4, 4), RED), "PNG")
    for name in ["zeta.png", "Alpha.png", "b/c.png", "a/z.png", "a/b.png", "m.png"]:
        write(tmp_path / name, png)
    write(tmp_path / "y.jpg", b"")
    write(tmp_path / "b.jpg", b"")

    first = discover_images(tmp_path)
    second = discover_images(tmp_path)

    assert first == second
    assert first.files == sorted(first.files)
    assert set(names(first.files, tmp_path)) == {"zeta.png", "Alpha.png", "b/c.png", "a/z.png", "a/b.png", "m.png"}
    assert [Path(item.path).name for item in first.skipped] == ["b.jpg", "y.jpg"]


def test_root_can_be_a_single_file(tmp_path: Path) -> None:
    image_path = write(tmp_path / "one.jpg", encode(Image.new("RGB", (4, 4), RED), "JPEG"))
    text_path = write(tmp_path / "notes.txt", b"hello\n")

    assert discover_images(image_path).files == [image_path]
    [skipped] = discover_images(text_path).skipped
    assert skipped.reason == REASON_NOT_IMAGE


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        discover_images(tmp_path / "nope")


def permissions_are_bypassed(tmp_path: Path) -> bool:
    """True for root (or anyone with CAP_DAC_OVERRIDE), who can read a chmod 000 file."""
    probe = write(tmp_path / "probe", b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
    except PermissionError:
        return False
    else:
        return True
    finally:
        probe.unlink()


def test_unreadable_file_and_folder_are_reported(tmp_path: Path) -> None:
    if permissions_are_bypassed(tmp_path):
        pytest.skip("this user can read any file, so nothing is unreadable")
    locked_file = write(tmp_path / "locked.jpg", encode(Image.new("RGB", (4, 4), RED), "JPEG"))
    locked_dir = tmp_path / "locked_dir"
    write(locked_dir / "inside.png", encode(Image.new("RGB", (4, 4), RED), "PNG"))
    locked_file.chmod(0)
    locked_dir.chmod(0)
    try:
        discovery = discover_images(tmp_path)
        with pytest.raises(DecodeError) as raised:
            load_rgb(locked_file)
        with pytest.raises(UsageError):
            discover_images(locked_dir)
    finally:
        locked_file.chmod(0o644)
        locked_dir.chmod(0o755)

    assert discovery.files == []
    assert {Path(item.path).name: item.reason for item in discovery.skipped} == {
        "locked.jpg": REASON_UNREADABLE,
        "locked_dir": REASON_UNREADABLE,
    }
    assert raised.value.reason == REASON_UNREADABLE


# --- decode_image / load_rgb ----------------------------------------------------


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DecodeError) as raised:
        load_rgb(tmp_path / "vanished.jpg")
    assert raised.value.reason == REASON_UNREADABLE


def test_text_bytes_are_not_an_image() -> None:
    with pytest.raises(DecodeError) as raised:
        decode_image(b"this is definitely some text\n")
    assert raised.value.reason == REASON_NOT_IMAGE
    assert "text" in raised.value.detail


def test_empty_bytes_are_an_empty_file() -> None:
    with pytest.raises(DecodeError) as raised:
        decode_image(b"")
    assert raised.value.reason == REASON_EMPTY


def test_heif_bytes_with_no_picture_are_corrupt() -> None:
    """A HEIF header with nothing after it: unsupported without pillow-heif, corrupt with it (it is both)."""
    with pytest.raises(DecodeError) as raised:
        decode_image(HEIC_HEADER)
    assert raised.value.reason == REASON_CORRUPT


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    data = encode(noise_image(120, 80), "JPEG")
    path = write(tmp_path / "half.jpg", data[: len(data) // 2])

    assert discover_images(tmp_path).files == [path]  # the header alone looks fine
    with pytest.raises(DecodeError) as raised:
        load_rgb(path)
    assert raised.value.reason == REASON_CORRUPT
    assert "truncated" in raised.value.detail


def test_png_with_broken_header_is_corrupt_not_unknown() -> None:
    zero_width = handmade_png(0, 5, 8, 2, b"")
    with pytest.raises(DecodeError) as raised:
        decode_image(zero_width)
    assert raised.value.reason == REASON_CORRUPT


def test_zero_width_bmp_is_corrupt() -> None:
    data = bytearray(encode(Image.new("RGB", (4, 4), RED), "BMP"))
    data[18:22] = struct.pack("<i", 0)  # BITMAPINFOHEADER width
    with pytest.raises(DecodeError) as raised:
        decode_image(bytes(data))
    assert raised.value.reason == REASON_CORRUPT


def test_decompression_bomb_is_refused_quickly() -> None:
    bomb = handmade_png(100_000, 100_000, 8, 2, b"\x00" * 100)

    start = time.monotonic()
    with pytest.raises(DecodeError) as raised:
        decode_image(bomb)

    assert time.monotonic() - start < 1
    assert raised.value.reason == REASON_TOO_LARGE


def test_max_pixels_is_checked_before_decoding() -> None:
    # 12000x12000 is under Pillow's own limit, and its tiny body would fail to
    # decode as truncated, so "too large" proves the header check came first.
    declared_big = handmade_png(12_000, 12_000, 8, 2, b"\x00" * 100)
    small_but_real = encode(Image.new("RGB", (200, 100), RED), "PNG")

    with pytest.raises(DecodeError) as big:
        decode_image(declared_big, max_pixels=DEFAULT_MAX_PIXELS // 100)
    with pytest.raises(DecodeError) as truncated:
        decode_image(declared_big)
    with pytest.raises(DecodeError) as refused:
        decode_image(small_but_real, max_pixels=19_999)

    assert big.value.reason == REASON_TOO_LARGE
    assert "12000x12000" in big.value.detail
    assert truncated.value.reason == REASON_CORRUPT
    assert refused.value.reason == REASON_TOO_LARGE
    assert "--max-pixels" in refused.value.detail
    assert decode_image(small_but_real, max_pixels=20_000).size == (200, 100)


def test_exif_orientation_is_applied() -> None:
    # Left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to view".
    image = Image.new("RGB", (60, 40), BLUE)
    image.paste(RED, (0, 0, 30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(image, "JPEG", exif=exif)

    upright = decode_image(data)

    assert upright.size == (40, 60)
    assert_close(rgb_at(upright, 20, 5), RED)
    assert_close(rgb_at(upright, 20, 55), BLUE)


def test_broken_exif_does_not_lose_the_image() -> None:
    data = encode(Image.new("RGB", (30, 20), RED), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff garbage")

    image = decode_image(data)

    assert image.size == (30, 20)
    assert_close(rgb_at(image, 5, 5), RED)


def test_transparent_rgba_becomes_white() -> None:
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (5, 0, 10, 10))

    decoded = decode_image(encode(image, "PNG"))

    assert decoded.mode == "RGB"
    assert rgb_at(decoded, 1, 1) == RED
    assert rgb_at(decoded, 8, 1) == WHITE


def test_half_transparent_black_becomes_mid_grey() -> None:
    decoded = decode_image(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert_close(rgb_at(decoded, 0, 0), (127, 127, 127), tolerance=2)


def test_palette_with_transparency_becomes_white() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    image.paste(2, (0, 0, 5, 10))
    data = encode(image, "PNG", transparency=2)

    decoded = decode_image(data)

    assert rgb_at(decoded, 1, 1) == WHITE
    assert rgb_at(decoded, 8, 1) == RED


def test_transparent_gif_colour_becomes_white() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    image.paste(2, (0, 0, 5, 10))

    decoded = decode_image(encode(image, "GIF", transparency=2))

    assert rgb_at(decoded, 1, 1) == WHITE
    assert rgb_at(decoded, 8, 1) == RED


def test_rgb_png_with_transparent_colour_becomes_white() -> None:
    image = Image.new("RGB", (10, 10), BLUE)
    image.paste(RED, (0, 0, 5, 10))

    decoded = decode_image(encode(image, "PNG", transparency=RED))

    assert rgb_at(decoded, 1, 1) == WHITE
    assert rgb_at(decoded, 8, 1) == BLUE


def test_grey_with_alpha_becomes_grey_on_white() -> None:
    image = Image.new("LA", (10, 10), (50, 255))
    image.paste((50, 0), (5, 0, 10, 10))

    decoded = decode_image(encode(image, "PNG"))

    assert rgb_at(decoded, 1, 1) == (50, 50, 50)
    assert rgb_at(decoded, 8, 1) == WHITE


def test_one_bit_image_becomes_black_and_white() -> None:
    image = Image.new("1", (10, 10), 0)
    image.paste(1, (5, 0, 10, 10))

    decoded = decode_image(encode(image, "PNG"))

    assert decoded.mode == "RGB"
    assert rgb_at(decoded, 1, 1) == (0, 0, 0)
    assert rgb_at(decoded, 8, 1) == WHITE


def test_cmyk_jpeg_colours_survive() -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    image.paste((255, 255, 0, 0), (8, 0, 16, 16))  # pure blue in CMYK
    data = encode(image, "JPEG", quality=95)

    decoded = decode_image(data)

    assert decoded.mode == "RGB"
    assert_close(rgb_at(decoded, 2, 8), RED, tolerance=30)
    assert_close(rgb_at(decoded, 13, 8), BLUE, tolerance=30)


def test_lab_tiff_colours_survive() -> None:
    red_in_lab = Image.new("RGB", (8, 8), RED).convert("LAB")

    decoded = decode_image(encode(red_in_lab, "TIFF"))

    assert_close(rgb_at(decoded, 4, 4), RED, tolerance=15)


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_sixteen_bit_grey_is_scaled_not_clipped(image_format: str) -> None:
    values = np.array([[65535, 32768, 0, 1000]], dtype=np.uint16)

    decoded = decode_image(encode(Image.fromarray(values), image_format))

    assert [rgb_at(decoded, x, 0)[0] for x in range(4)] == [255, 128, 0, 4]


def test_big_endian_sixteen_bit_tiff_is_scaled() -> None:
    values = np.array([[65535, 32768]], dtype=">u2")
    image = Image.fromarray(values)
    assert image.mode == "I;16B"

    decoded = decode_image(encode(image, "TIFF"))

    assert [rgb_at(decoded, x, 0)[0] for x in range(2)] == [255, 128]


def test_sixteen_bit_rgb_png_is_decoded() -> None:
    row = b"\x00" + b"".join(struct.pack(">HHH", 65535, 32768, 0) for _ in range(3))
    decoded = decode_image(handmade_png(3, 2, 16, 2, row * 2))

    assert decoded.mode == "RGB"
    assert_close(rgb_at(decoded, 1, 1), (255, 128, 0), tolerance=1)


def test_float_tiff_is_stretched_to_full_range() -> None:
    values = np.array([[-1.0, 0.5, 3.0]], dtype=np.float32)

    decoded = decode_image(encode(Image.fromarray(values), "TIFF"))

    assert [rgb_at(decoded, x, 0)[0] for x in range(3)] == [0, 96, 255]


def test_constant_float_tiff_does_not_divide_by_zero() -> None:
    values = np.full((4, 4), 7.5, dtype=np.float32)

    decoded = decode_image(encode(Image.fromarray(values), "TIFF"))

    assert decoded.mode == "RGB"
    assert rgb_at(decoded, 0, 0) == (0, 0, 0)


def test_32_bit_integer_tiff_with_16_bit_values_is_scaled() -> None:
    values = np.array([[0, 65535]], dtype=np.int32)

    decoded = decode_image(encode(Image.fromarray(values), "TIFF"))

    assert [rgb_at(decoded, x, 0)[0] for x in range(2)] == [0, 255]


@pytest.mark.parametrize("image_format", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(image_format: str) -> None:
    frames = [Image.new("RGB", (20, 20), colour) for colour in (RED, BLUE, BLUE)]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, loop=0)

    decoded = decode_image(data)

    assert decoded.size == (20, 20)
    assert_close(rgb_at(decoded, 10, 10), RED, tolerance=20)


def test_draft_size_decodes_big_jpegs_small_but_not_too_small(tmp_path: Path) -> None:
    path = write(tmp_path / "big.jpg", encode(Image.new("RGB", (4000, 3000), RED), "JPEG"))

    full = load_rgb(path)
    drafted = load_rgb(path, draft_size=256)
    drafted_portrait = decode_image(encode(Image.new("RGB", (3000, 4000), RED), "JPEG"), draft_size=256)

    assert full.size == (4000, 3000)
    assert min(drafted.size) >= 256
    assert drafted.size[0] <= 1000
    assert drafted.size[0] / drafted.size[1] == pytest.approx(4 / 3, rel=0.01)
    assert min(drafted_portrait.size) >= 256
    assert drafted_portrait.size[1] <= 1000


def test_full_size_is_the_files_picture_upright_even_when_drafted() -> None:
    landscape = encode(Image.new("RGB", (4000, 3000), RED), "JPEG")
    drafted = decode_image(landscape, draft_size=256)
    assert drafted.size[0] < 4000 and full_size(drafted) == (4000, 3000)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned a quarter
    turned = decode_image(encode(Image.new("RGB", (4000, 3000), RED), "JPEG", exif=exif), draft_size=256)
    assert turned.size[0] < turned.size[1] and full_size(turned) == (3000, 4000)
    assert full_size(decode_image(encode(Image.new("RGB", (600, 400), RED), "PNG"), draft_size=64)) == (600, 400)


def test_draft_size_does_not_affect_other_formats() -> None:
    data = encode(Image.new("RGB", (600, 400), RED), "PNG")
    assert decode_image(data, draft_size=64).size == (600, 400)


def test_draft_size_must_be_positive() -> None:
    with pytest.raises(UsageError):
        decode_image(encode(Image.new("RGB", (4, 4), RED), "JPEG"), draft_size=0)


def test_load_rgb_never_touches_the_source(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "rotated.jpg", encode(noise_image(64, 48), "JPEG", exif=exif))
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    image = load_rgb(path, draft_size=16)
    image.paste(RED, (0, 0, 10, 10))

    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_returned_image_is_fully_loaded_and_independent() -> None:
    decoded = decode_image(encode(noise_image(32, 24), "PNG"))
    assert np.asarray(decoded).shape == (24, 32, 3)
    assert decoded.format is None  # a fresh image, detached from the parser and its buffer


@pytest.mark.parametrize("image_format", DECODABLE_FORMATS)
def test_damaged_files_only_ever_raise_decode_error(image_format: str) -> None:
    original = encode(noise_image(24, 16, seed=1), image_format)
    rng = np.random.default_rng(7)
    damaged_versions = [original[:cut] for cut in rng.integers(1, len(original), 15)]
    for _ in range(25):
        mutated = bytearray(original)
        for position in rng.integers(0, len(original), 4):
            mutated[position] = int(rng.integers(0, 256))
        damaged_versions.append(bytes(mutated))

    for damaged in damaged_versions:
        try:
            image = decode_image(damaged)
        except DecodeError:
            continue
        assert image.mode == "RGB"
