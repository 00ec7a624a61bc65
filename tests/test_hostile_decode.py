"""Hostile files for the decode stage, and decode workers that must not outlive a killed run.

Memory bombs that stay under --max-pixels by the header (a huge TIFF tile, a PNG padded with
hundreds of megabytes, float pictures widened to float64), special files named like images (a
FIFO blocks whoever opens it, /dev/zero never ends), and `kill -9` of a run whose worker
processes would otherwise wait for work forever. Files are built at run time; sparse padding
costs no disk.
"""

from __future__ import annotations

import csv
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from corpus import encode, quadrants, tiled_tiff
from PIL import Image

from pixclust.embedding.decode import decode_image, load_rgb
from pixclust.embedding.discover import discover_images
from pixclust.embedding.files import REASON_TOO_LARGE
from pixclust.errors import DecodeError

needs_fifos = pytest.mark.skipif(
    not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs FIFOs and /dev"
)
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes in /proc")

SPARSE_BYTES = 64 << 20
NOT_REGULAR = "not a regular file"


def traced_peak(work: Callable[[], object]) -> int:
    """The most bytes Python and NumPy held at once during ``work`` (Pillow's own image memory is not counted)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def reason_of(work: Callable[[], object]) -> str:
    with pytest.raises(DecodeError) as raised:
        work()
    return raised.value.reason


# --- memory bombs under --max-pixels ------------------------------------------------------


def test_a_tiff_tile_over_the_pixel_limit_is_refused_before_it_is_decoded() -> None:
    """A 16x16 picture in one tile: libtiff decodes the whole tile, so the tile is held to the limits."""
    limit = 1_200_000
    # 1024 x 1024 x 3 bytes: within both the pixel count and 4 bytes a pixel.
    assert decode_image(tiled_tiff(16, 16, 1024), max_pixels=limit).size == (16, 16)
    # 2048 x 2048: more pixels than the limit (the same bomb as a 16384 tile, 807 MB, under the default limit).
    assert reason_of(lambda: decode_image(tiled_tiff(16, 16, 2048), max_pixels=limit)) == REASON_TOO_LARGE
    # 1024 x 1024 at 16 bits a sample: 6 bytes a pixel, over what the limit allows per pixel.
    assert reason_of(lambda: decode_image(tiled_tiff(16, 16, 1024, bits=16), max_pixels=limit)) == REASON_TOO_LARGE


def padded_png(path: Path, where: str) -> Path:
    """A 16x16 PNG made SPARSE_BYTES long by a hole: after its end, or as one huge chunk before its pixels."""
    png = encode(quadrants(16, 16), "PNG")
    with open(path, "wb") as stream:
        if where == "after the end":
            stream.write(png)
            stream.truncate(SPARSE_BYTES)
        else:
            header_end = 8 + 25
            stream.write(png[:header_end] + struct.pack(">I", SPARSE_BYTES) + b"zzZz")
            stream.seek(SPARSE_BYTES + 4, os.SEEK_CUR)
            stream.write(png[header_end:])
    return path


@pytest.mark.parametrize("where", ["after the end", "in a chunk"])
def test_a_png_far_larger_than_its_pixels_is_refused_unread(tmp_path: Path, where: str) -> None:
    path = padded_png(tmp_path / "padded.png", where)
    reasons = []
    peak = traced_peak(lambda: reasons.append(reason_of(lambda: load_rgb(path))))
    assert reasons == [REASON_TOO_LARGE]
    assert peak < SPARSE_BYTES / 64


def test_a_file_larger_than_any_picture_under_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """Pillow reads a WebP file whole; the file's size is bounded by what --max-pixels pixels could need."""
    path = tmp_path / "padded.webp"
    with open(path, "wb") as stream:
        stream.write(encode(quadrants(16, 16), "WEBP", lossless=True))
        stream.truncate(SPARSE_BYTES + (2 << 20))
    reasons = []
    peak = traced_peak(lambda: reasons.append(reason_of(lambda: load_rgb(path, max_pixels=1000))))
    assert reasons == [REASON_TOO_LARGE]
    assert peak < SPARSE_BYTES / 64
    assert load_rgb(path, max_pixels=10_000_000).size == (16, 16)


SIDE = 2048


def float_tiff(folder: Path) -> Path:
    path = folder / "float32.tif"
    Image.fromarray(np.linspace(-1, 3, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE), "F").save(path)
    return path


def int32_tiff(folder: Path) -> Path:
    path = folder / "int32.tif"
    values = np.linspace(-2e9, 2e9, SIDE * SIDE).astype(np.int32).reshape(SIDE, SIDE)
    Image.fromarray(values, "I").save(path)
    return path


def grey16_png(folder: Path) -> Path:
    path = folder / "grey16.png"
    Image.fromarray(np.linspace(0, 65535, SIDE * SIDE).astype(np.uint16).reshape(SIDE, SIDE)).save(path)
    return path


@pytest.mark.parametrize("write", [float_tiff, int32_tiff, grey16_png], ids=["float32", "int32", "uint16"])
def test_wide_pixels_are_narrowed_without_whole_picture_copies(tmp_path: Path, write: Callable[[Path], Path]) -> None:
    """Whole-picture float64 copies took 25 to 40 bytes a pixel; narrowing must stay under the picture's own 4."""
    path = write(tmp_path)
    decoded = []
    peak = traced_peak(lambda: decoded.append(load_rgb(path)))
    picture = np.asarray(decoded[0])
    assert picture.shape == (SIDE, SIDE, 3)
    # A ramp from the lowest value to the highest: black at the start, white at the end.
    assert picture[0, 0].tolist() == [0, 0, 0] and picture[-1, -1].tolist() == [255, 255, 255]
    assert peak < 4 * SIDE * SIDE


# --- files that are not regular files -------------------------------------------------------


def unblock_later(fifo: Path) -> threading.Timer:
    """Open the FIFO's writing end after a while: code that opened it to read would otherwise never return."""

    def open_writer() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader was waiting

    timer = threading.Timer(5, open_writer)
    timer.start()
    return timer


def special_files(root: Path) -> dict[str, str]:
    """A FIFO and links to devices, named like images and not; returns the names that must be listed."""
    root.mkdir()
    (root / "photo.png").write_bytes(encode(quadrants(16, 16), "PNG"))
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "pipe-without-extension")
    os.symlink("/dev/zero", root / "dev.png")
    os.symlink("/dev/null", root / "null.jpg")
    return {"pipe.jpg": "a FIFO", "dev.png": "a link to a character device", "null.jpg": "a link to a character device"}


@needs_fifos
def test_fifos_and_device_links_named_like_images_are_listed_and_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "special"
    expected = special_files(root)

    discovery = discover_images(root)
    timer = unblock_later(root / "pipe.jpg")
    try:
        fifo_reason = reason_of(lambda: load_rgb(root / "pipe.jpg"))
    finally:
        timer.cancel()
    null_reason = reason_of(lambda: load_rgb(root / "null.jpg"))

    assert discovery.files == [root / "photo.png"]
    listed = {Path(item.path).name: item for item in discovery.skipped}
    assert {name: item.reason for name, item in listed.items()} == dict.fromkeys(expected, NOT_REGULAR)
    assert all(kind in listed[name].detail for name, kind in expected.items())
    assert fifo_reason == null_reason == NOT_REGULAR


@pytest.mark.slow
@needs_fifos
def test_a_run_lists_fifos_and_device_links_in_errors_csv(tmp_path: Path) -> None:
    root, run_dir = tmp_path / "special", tmp_path / "run"
    expected = special_files(root)
    for n in range(3):
        (root / f"more-{n}.png").write_bytes(encode(quadrants(20 + n, 16), "PNG"))
    command = [
        sys.executable,
        "-m",
        "pixclust",
        "cluster",
        str(root),
        "--out",
        str(run_dir),
        "--model",
        "pixels",
        "--k",
        "2",
        "--pipeline",
        "fixed",
        "--no-report",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    with open(run_dir / "errors.csv", newline="", encoding="utf-8") as stream:
        reasons = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(stream)}
    assert reasons == dict.fromkeys(expected, NOT_REGULAR)


# --- workers of a killed run ----------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """State, parent pid, ... of a live process; None once it is gone or only a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def kill_and_count_survivors(process: subprocess.Popen[bytes], expected_workers: int) -> set[int]:
    """Wait until ``process`` stops itself with its workers started, kill -9 it, and return the workers still alive."""

    def stopped() -> bool:
        return process.poll() is not None or (stat_fields(process.pid) or ["?"])[0] == "T"

    wait_for(stopped, "the run to stop itself")
    assert process.poll() is None, process.communicate()[1].decode()
    workers = children_of(process.pid)
    assert len(workers) == expected_workers
    process.kill()
    process.wait()
    try:
        # A worker left alive would never end; give the kernel's signal ample time to be delivered.
        deadline = time.monotonic() + 20
        while any(stat_fields(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        return {pid for pid in workers if stat_fields(pid)}
    finally:
        for pid in workers:
            if stat_fields(pid):
                os.kill(pid, signal.SIGKILL)
        # Only now: a surviving worker holds the run's output pipes open.
        process.communicate()


# The real CLI, stopping itself (SIGSTOP) when the first decoded batch arrives: its decode workers
# are then certainly alive, and the test kills it there, mid-embedding.
STOP_MID_EMBEDDING = r"""
import os, signal, sys
from pixclust.embedding import extraction
from pixclust.cli import main

real_batches = extraction.Embedder.iter_batches
def batches(self, paths):
    for batch in real_batches(self, paths):
        os.kill(os.getpid(), signal.SIGSTOP)
        yield batch
extraction.Embedder.iter_batches = batches
sys.argv = ["pixclust", *sys.argv[1:]]
main()
"""

# The report's thumbnails, stopping when the first chunk comes back from the worker pool.
STOP_MID_THUMBNAILS = r"""
import os, signal, sys
from pathlib import Path
from pixclust.progress import reporting
from pixclust.report import thumbnails

def stop_at_first_chunk(task, done, total):
    if done:
        os.kill(os.getpid(), signal.SIGSTOP)
paths = sys.argv[2:]
with reporting(stop_at_first_chunk):
    thumbnails.load_thumbnails(Path(sys.argv[1]), paths, [str(n) for n in range(len(paths))])
"""


def write_pictures(root: Path, count: int) -> list[Path]:
    root.mkdir()
    paths = [root / f"img_{n:03d}.png" for n in range(count)]
    for n, path in enumerate(paths):
        path.write_bytes(encode(quadrants(24 + n % 7, 24), "PNG"))
    return paths


@pytest.mark.slow
@needs_proc
def test_decode_workers_exit_when_the_run_is_killed(tmp_path: Path) -> None:
    write_pictures(tmp_path / "photos", 40)
    args = [
        "cluster",
        str(tmp_path / "photos"),
        "--out",
        str(tmp_path / "run"),
        "--model",
        "pixels",
        "--k",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--no-report",
        "--quiet",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", STOP_MID_EMBEDDING, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    assert kill_and_count_survivors(process, expected_workers=2) == set()


@pytest.mark.slow
@needs_proc
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="thumbnails use worker processes only with two cores or more")
def test_thumbnail_workers_exit_when_the_report_is_killed(tmp_path: Path) -> None:
    # Three chunks of 64: a worker each, as many as there are cores.
    paths = write_pictures(tmp_path / "photos", 130)
    (tmp_path / "run").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", STOP_MID_THUMBNAILS, str(tmp_path / "run"), *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    assert kill_and_count_survivors(process, expected_workers=min(3, os.cpu_count() or 1)) == set()
