"""Caches and disks tried as a hostile world would (issue #15, cases 13 and 14).

A damaged ``embeddings.parquet`` (or a view's, or a shard) is rebuilt with one
warning line, an older store is read and rewritten with its version, never
re-extracted, and a damaged ONNX export is exported again. A full disk ends a
command with one line and exit code 1, and the same command (or
``resume-move``) finishes the work once there is room. The full disk is a real
one: a small tmpfs where this process may mount one (as root), otherwise the
size limit on one file (RLIMIT_FSIZE) in the command's process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from command_line import pixclust as pixclust_cli
from command_line import pixclust_process
from conftest import tree_digest, write_digit_tree
from PIL import Image

import pixclust
from pixclust.embedding.extractor import FeatureExtractor
from pixclust.embedding.models import MODELS
from pixclust.embedding.pixel_stats import IMAGE_STATS
from pixclust.embedding.runtimes import onnx_path, runner_from_export
from pixclust.embedding.store import EMBEDDINGS_FILE, EmbeddingStore
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError

# The store's version, as the file format says it: a key of the Parquet schema's metadata.
VERSION_KEY = b"pixclust_store_version"
VERSION = b"2"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return write_digit_tree(tmp_path / "photos", per_class=3)


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the library warned about (to the pixclust logger, which pytest's own handler reads), since the last call."""
    logged = [record.getMessage() for record in caplog.records if record.name == "pixclust"]
    caplog.clear()
    return logged


def with_vectors(table: pa.Table, vectors: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index("vector"), "vector", vectors)


def variable_length(table: pa.Table) -> pa.Table:
    return with_vectors(table, pa.array(table.column("vector").to_pylist(), pa.list_(pa.float32())))


def three_dimensional(table: pa.Table) -> pa.Table:
    flat = pa.array(np.ones(3 * len(table), dtype=np.float32))
    return with_vectors(table, pa.FixedSizeListArray.from_arrays(flat, 3))


def not_a_number(table: pa.Table) -> pa.Table:
    dim = table.schema.field("vector").type.list_size
    return with_vectors(
        table, pa.FixedSizeListArray.from_arrays(pa.array(np.full(dim * len(table), np.nan, np.float32)), dim)
    )


def from_a_newer_pixclust(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata({VERSION_KEY: b"99"})


DAMAGE: dict[str, Callable[[pa.Table], pa.Table]] = {
    "variable-length vectors": variable_length,
    "a missing column": lambda table: table.drop_columns(["width"]),
    "3-d vectors": three_dimensional,
    "NaN vectors": not_a_number,
    "a newer version": from_a_newer_pixclust,
}


@pytest.mark.parametrize("model", ["pixels", "hog"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_rebuilt_with_one_warning(
    tmp_path: Path, photos: Path, caplog: pytest.LogCaptureFixture, model: str, damage: str
) -> None:
    run_dir = tmp_path / "run"
    first = pixclust.embed(photos, out=run_dir, model=model, quiet=True)
    store_file = run_dir / EMBEDDINGS_FILE
    pq.write_table(DAMAGE[damage](pq.read_table(store_file)), store_file)
    caplog.clear()

    again = pixclust.embed(photos, out=run_dir, model=model, quiet=True)
    (warning,) = warnings_logged(caplog)
    assert str(run_dir) in warning and "made again" in warning
    assert again.n_extracted == len(first) and again.dim == MODELS[model].dim
    np.testing.assert_array_equal(again.vectors, first.vectors)
    schema = pq.read_schema(store_file)
    assert schema.metadata[VERSION_KEY] == VERSION
    assert schema.field("vector").type == pa.list_(pa.float32(), MODELS[model].dim)

    third = pixclust.embed(photos, out=run_dir, model=model, quiet=True)
    assert third.n_reused == len(first) and warnings_logged(caplog) == []


def test_the_command_line_shows_a_repair_as_one_warning_line(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from pixclust.cli import main

    run_dir = tmp_path / "run"
    command = [
        "pixclust",
        "cluster",
        str(photos),
        "--out",
        str(run_dir),
        "--model",
        "pixels",
        "--k",
        "3",
        "--no-report",
    ]
    monkeypatch.setattr(sys, "argv", command)

    def cluster() -> str:
        with pytest.raises(SystemExit) as exited:
            main()
        # sys.exit(None), Typer's return for a command that ran through, is success.
        assert not exited.value.code
        return capfd.readouterr().err

    cluster()
    store_file = run_dir / EMBEDDINGS_FILE
    pq.write_table(variable_length(pq.read_table(store_file)), store_file)
    (warning,) = warnings_in(cluster())
    assert str(run_dir) in warning and "made again" in warning


@pytest.mark.parametrize("version", [b"1", None])
def test_a_store_from_before_pixel_stats_is_made_again_once_with_one_warning(
    tmp_path: Path, photos: Path, caplog: pytest.LogCaptureFixture, version: bytes | None
) -> None:
    run_dir = tmp_path / "run"
    first = pixclust.embed(photos, out=run_dir, model="pixels", quiet=True)
    store_file = run_dir / EMBEDDINGS_FILE
    # The file as pixclust wrote it before the store held pixel stats: version 1, or before versions no metadata.
    older = pq.read_table(store_file).drop_columns(list(IMAGE_STATS))
    pq.write_table(older.replace_schema_metadata({VERSION_KEY: version} if version else None), store_file)
    caplog.clear()

    again = pixclust.embed(photos, out=run_dir, model="pixels", quiet=True)
    (warning,) = warnings_logged(caplog)
    assert "pixel stats" in warning and "made again" in warning
    assert (again.n_extracted, again.n_reused) == (len(first), 0)
    np.testing.assert_array_equal(again.image_stats, first.image_stats)
    assert np.isfinite(again.image_stats).all()
    assert pq.read_schema(store_file).metadata[VERSION_KEY] == VERSION
    third = pixclust.embed(photos, out=run_dir, model="pixels", quiet=True)
    assert third.n_reused == len(first) and warnings_logged(caplog) == []


def test_a_damaged_store_that_nothing_can_rebuild_is_one_line(tmp_path: Path, photos: Path) -> None:
    pixclust.embed(photos, out=tmp_path, model="pixels", quiet=True)
    store_file = tmp_path / EMBEDDINGS_FILE
    pq.write_table(variable_length(pq.read_table(store_file)), store_file)
    with pytest.raises(UsageError, match=r"cannot be used .*fixed-size lists"):
        EmbeddingStore(tmp_path).load()


def shard(offset: int) -> pa.Table:
    return Embeddings(
        paths=[f"/photos/{offset + i}.jpg" for i in range(2)],
        vectors=np.ones((2, 4), np.float32),
        content_hashes=[f"h{offset + i}" for i in range(2)],
        file_sizes=np.zeros(2, np.int64),
        mtimes_ns=np.zeros(2, np.int64),
        image_sizes=np.ones((2, 2), np.int32),
        model_id="m:1",
        image_stats=np.ones((2, len(IMAGE_STATS)), np.float32),
    ).to_table()


def test_a_shard_never_takes_the_name_of_another(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    store.save_partial(shard(0))
    (oldest,) = store.partial_dir.iterdir()
    store.save_partial(shard(10))
    # One shard fewer than written (another writer's, or one removed): a count would name the next as the last.
    oldest.unlink()
    store.save_partial(shard(20))
    assert set(store.known("m:1").row_of_hash) == {"h10", "h11", "h20", "h21"}


# A file that claims to be an ONNX model from PyTorch and is cut short in its graph.
CUT_SHORT_ONNX = b"\x08\x08\x12\x07pytorch\x3a\x40\x0a\x05"


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_a_damaged_onnx_export_is_removed_for_the_network_to_export_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, runtime: str
) -> None:
    pytest.importorskip(runtime)
    monkeypatch.setenv("PIXCLUST_CACHE", str(tmp_path))
    export = onnx_path("hostile:0", 224)
    export.parent.mkdir(parents=True)
    export.write_bytes(CUT_SHORT_ONNX)
    assert runner_from_export("hostile:0", 224, runtime=runtime) is None
    assert not export.exists()
    (warning,) = warnings_logged(caplog)
    assert str(export) in warning and "exported again" in warning


@pytest.mark.slow
def test_a_damaged_onnx_export_of_the_model_is_exported_again(
    tmp_path: Path, default_extractor: FeatureExtractor, private_cache: Path
) -> None:
    # A copy of this session's cache (weights record and export), so that the damage stays in this test.
    cache = shutil.copytree(private_cache, tmp_path / "cache")
    size = default_extractor.record.preprocessing["input_size"]
    export = onnx_path(default_extractor.model_id, size).relative_to(private_cache)
    whole = (cache / export).read_bytes()
    (cache / export).write_bytes(whole[: len(whole) // 2])
    script = (
        "import numpy as np\n"
        "from pixclust.embedding.extractor import load_extractor\n"
        f"print(load_extractor().embed_batch(np.zeros((2, {size}, {size}, 3), np.uint8)).shape)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PIXCLUST_CACHE": str(cache)}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(2,", f"{default_extractor.dim})"]
    (warning,) = warnings_in(result.stderr)
    assert str(cache / export) in warning
    assert len((cache / export).read_bytes()) == len(whole)


@dataclass
class SmallDisk:
    """A folder that runs out of room: a tmpfs of ``size`` bytes, or (where mounting is not allowed) a limit on each file.

    The limit (RLIMIT_FSIZE, with SIGXFSZ ignored so that a write fails with EFBIG)
    applies to every file a command writes, and lives in a folder of /dev/shm when that
    is another file system, so that moves there copy as across disks.
    """

    path: Path
    size: int
    kind: str

    def pixclust(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """The command writing to this disk: a limit on each file binds a process, so that one gets its own."""
        if self.kind == "file size limit":
            return pixclust_process(*args, env={"COLUMNS": "300"}, preexec_fn=lambda: _limit_file_size(self.size))
        return pixclust_cli(*args, env={"COLUMNS": "300"})

    def make_room(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=256m", str(self.path)], check=True)
        else:
            self.size = resource.RLIM_INFINITY

    def fill(self) -> None:
        """Leave no room (a tmpfs only: a limit on each file is full for any file over it)."""
        if self.kind == "tmpfs":
            with contextlib.suppress(OSError), open(self.path / "filler", "wb") as filler:
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()


def _limit_file_size(size: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], SmallDisk]]:
    mounted: list[Path] = []
    made: list[Path] = []

    def make(size: int) -> SmallDisk:
        path = tmp_path / f"disk{len(mounted) + len(made)}"
        path.mkdir()
        try:
            mount = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
            )
        except FileNotFoundError:
            mount = None
        if mount is not None and mount.returncode == 0:
            mounted.append(path)
            return SmallDisk(path, size, "tmpfs")
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
            path = Path(tempfile.mkdtemp(dir=shm))
            made.append(path)
        return SmallDisk(path, size, "file size limit")

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)
    for path in made:
        shutil.rmtree(path)


def assert_disk_full_line(result: subprocess.CompletedProcess[str], written: str | Path | None = None) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no space left on the disk"), lines[0]
    assert lines[0].endswith("; free some space and run the same command again (work done so far is kept)"), lines[0]
    if written is not None:
        assert f"while writing {written}" in lines[0], lines[0]


@pytest.mark.slow
def test_a_full_disk_while_writing_the_store_is_one_line_and_the_same_command_finishes(
    tmp_path: Path, small_disk: Callable[[int], SmallDisk]
) -> None:
    # Noise, whose vectors do not compress: the first 64 kB file written is the store's first shard.
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise"
    noise.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise / f"noise_{i}.png")
    disk = small_disk(64 * 1024)
    command = ("cluster", noise, "--out", disk.path / "run", "--model", "pixels", "--k", "2", "--no-report", "--quiet")
    assert_disk_full_line(disk.pixclust(*command), disk.path / "run" / "embeddings.partial")
    disk.make_room()
    done = disk.pixclust(*command)
    assert done.returncode == 0, done.stderr
    assert len((disk.path / "run" / "clusters.csv").read_text().splitlines()) == 13


@pytest.mark.slow
def test_a_full_disk_while_moving_across_disks_keeps_every_original(
    tmp_path: Path, photos: Path, small_disk: Callable[[int], SmallDisk]
) -> None:
    disk = small_disk(1024 * 1024)
    if disk.path.stat().st_dev == photos.stat().st_dev:
        pytest.skip("no second file system to move across")
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photos / "big.png")
    before = tree_digest(photos)
    run_dir = disk.path / "run"
    moving = disk.pixclust(
        "cluster",
        photos,
        "--out",
        run_dir,
        "--model",
        "pixels",
        "--method",
        "kmeans",
        "--k",
        "2",
        "--no-report",
        "--quiet",
        "--move",
    )
    assert_disk_full_line(moving)
    # Each original is whole, at its source or (moved before the disk filled) in the run folder.
    moved = {path.name: path for path in (run_dir / "clusters").rglob("*") if path.is_file()}
    assert (photos / "big.png").is_file()
    for name, (digest, _) in before.items():
        where = photos / name if (photos / name).is_file() else moved[Path(name).name]
        assert hashlib.sha256(where.read_bytes()).hexdigest() == digest, name
    disk.make_room()
    resumed = disk.pixclust("resume-move", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert not any(path.is_file() for path in photos.rglob("*"))
    assert sorted(path.name for path in (run_dir / "clusters").rglob("*") if path.is_file()) == sorted(
        Path(name).name for name in before
    )


@pytest.mark.slow
def test_a_full_disk_while_writing_labels_is_one_line(tmp_path: Path, small_disk: Callable[[int], SmallDisk]) -> None:
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(0, 1, (150, 16)), rng.normal(6, 1, (150, 16))]).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    (tmp_path / "refs.csv").write_text("class,id\na,0\na,1\nb,150\nb,151\n")
    disk = small_disk(1024)
    disk.fill()
    command = (
        "label",
        "--in",
        tmp_path / "vectors.npy",
        "--refs",
        tmp_path / "refs.csv",
        "--out",
        disk.path / "labels",
    )
    assert_disk_full_line(disk.pixclust(*command), disk.path / "labels" / "labels.csv")
    disk.make_room()
    done = disk.pixclust(*command)
    assert done.returncode == 0, done.stderr
    assert len((disk.path / "labels" / "labels.csv").read_text().splitlines()) == 301
