"""Ctrl-C and kill -9 at several moments of a real run, then the same command again.

A driver runs the real CLI in a subprocess and sends that very process a real
signal at a chosen moment (before batch N, while a shard or the final store
is half written, after embedding); one test signals from outside, to the
whole process group as a terminal does. The run that follows must finish,
extract only what was not saved, and give the same vectors as a run that was
never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tree_digest
from corpus import encode, quadrants

import pixclust
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.store import EmbeddingStore
from pixclust.runs.pipeline import RunConfig

N_IMAGES = 120
BATCH = 4
FLUSH_EVERY = 16  # a shard every four batches, so a kill has shards to keep and loses the rest
INTERRUPTED_MESSAGE = "interrupted; embeddings made so far are saved, run the same command to resume"

# Runs pixclust's CLI after arranging a real signal to this process at the moment named by
# KILL_AT ("stage:n:SIGNAL"); BATCH_DELAY_S slows each batch so an outside signal lands mid-run.
DRIVER = r"""
import os, signal, sys, time
import pyarrow.parquet as pq
from pixclust.embedding import extraction
from pixclust.runs import pipeline
from pixclust.cli import main

extraction.FLUSH_EVERY = int(os.environ["FLUSH_EVERY"])
# Ctrl-C as a terminal delivers it, even when a non-interactive shell started the tests in the
# background with SIGINT ignored, which every child inherits.
signal.signal(signal.SIGINT, signal.default_int_handler)
stage, nth, name = (os.environ.get("KILL_AT") or "none:0:SIGKILL").split(":")
nth, sig = int(nth), getattr(signal, name)
delay = float(os.environ.get("BATCH_DELAY_S", "0"))

def strike():
    os.kill(os.getpid(), sig)

real_batches = extraction.Embedder.iter_batches
def batches(self, paths):
    for n, batch in enumerate(real_batches(self, paths)):
        if stage == "batch" and n == nth:
            strike()
        time.sleep(delay)
        yield batch
extraction.Embedder.iter_batches = batches

real_write = pq.write_table
written = {"part": 0, "embeddings": 0}
def write_table(table, where, *args, **kwargs):
    real_write(table, where, *args, **kwargs)
    kind = "part" if os.path.basename(str(where)).startswith(".part-") else "embeddings"
    if stage == kind and written[kind] == nth:
        # Leave the temporary file torn, as a kill during the write would.
        with open(where, "r+b") as stream:
            stream.truncate(os.path.getsize(where) // 2)
        strike()
    written[kind] += 1
pq.write_table = write_table

real_errors = pipeline.write_errors_csv
def write_errors_csv(*args, **kwargs):
    if stage == "exported":
        strike()
    return real_errors(*args, **kwargs)
pipeline.write_errors_csv = write_errors_csv

from pixclust.runs import add
real_placed = add._write_clusters_csv
def write_clusters_csv(*args, **kwargs):
    if stage == "placed":
        strike()
    return real_placed(*args, **kwargs)
add._write_clusters_csv = write_clusters_csv

sys.argv = ["pixclust", *sys.argv[1:]]
main()
"""


def cluster_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "cluster",
        str(root),
        "--out",
        str(run_dir),
        "--model",
        "pixels",
        "--k",
        "3",
        "--batch-size",
        str(BATCH),
        "--no-report",
        "--quiet",
        *extra,
    ]


def driven(args: list[str], kill_at: str | None = None, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "FLUSH_EVERY": str(FLUSH_EVERY), "KILL_AT": kill_at or "", **popen.pop("env", {})}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def saved_rows(run_dir: Path) -> int:
    """What the store holds for the pixels model; reading it must work whatever the kill left."""
    return len(EmbeddingStore(run_dir).known(load_extractor("pixels").model_id).row_of_hash)


def resume_and_check(root: Path, run_dir: Path, saved: int, reference: dict[str, np.ndarray]) -> None:
    """The same run again, in this process (what follows the signal is not what is under test)."""
    pixclust.run(
        RunConfig(str(root), str(run_dir), model="pixels", k=3, batch_size=BATCH, workers=0, report=False), quiet=True
    )
    counts = json.loads((run_dir / "run.json").read_text())["counts"]
    assert counts["extracted"] == N_IMAGES - saved and counts["reused"] == saved
    table = pq.read_table(run_dir / "embeddings.parquet").to_pydict()
    assert sorted(table["path"]) == sorted(reference)
    for path, vector in zip(table["path"], table["vector"], strict=True):
        np.testing.assert_allclose(vector, reference[path], rtol=1e-5, atol=1e-5)
    assert not (run_dir / "embeddings.partial").exists()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    colours = np.random.default_rng(3).integers(0, 256, (N_IMAGES, 4, 3))
    for n in range(N_IMAGES):
        folder = root / f"set{n % 3}"
        folder.mkdir(exist_ok=True)
        picture = quadrants(24 + n % 9, 24, tuple(tuple(int(v) for v in colour) for colour in colours[n]))
        (folder / f"img_{n:03d}.png").write_bytes(encode(picture, "PNG"))
    return root


@pytest.fixture(scope="module")
def reference(photos: Path) -> dict[str, np.ndarray]:
    """Vectors from a run that was never interrupted."""
    embeddings = pixclust.embed(photos, model="pixels", quiet=True)
    return dict(zip(embeddings.paths, embeddings.vectors, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "saved"),
    [
        # Ctrl-C before batch 5 arrives: batch 5 is still embedded, then everything made is saved.
        ("batch:5:SIGINT", 6 * BATCH),
        # kill -9 before batch 9: the two shards flushed after batches 4 and 8 survive.
        ("batch:9:SIGKILL", 2 * FLUSH_EVERY),
        # kill -9 while the third shard, or the final store (all rows are in shards by then), is half written.
        ("part:2:SIGKILL", 2 * FLUSH_EVERY),
        ("embeddings:0:SIGKILL", N_IMAGES),
        # kill -9 after the store is complete, while exporting.
        ("exported:0:SIGKILL", N_IMAGES),
        ("exported:0:SIGINT", N_IMAGES),
    ],
)
def test_signal_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path, photos: Path, reference: dict[str, np.ndarray], kill_at: str, saved: int
) -> None:
    before = tree_digest(photos)
    run_dir = tmp_path / "run"
    code, stdout, stderr = finish(driven(cluster_args(photos, run_dir, "--workers", "0"), kill_at))

    if kill_at.endswith("SIGINT"):
        assert code == 130
        assert stderr.strip() == INTERRUPTED_MESSAGE and stdout == ""
    else:
        assert code == -signal.SIGKILL
    assert saved_rows(run_dir) == saved
    resume_and_check(photos, run_dir, saved, reference)
    assert tree_digest(photos) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "saved"),
    [
        # kill -9 before the ninth batch of new images: the two shards flushed after batches 4 and 8 survive.
        ("batch:9:SIGKILL", 2 * FLUSH_EVERY),
        # kill -9 while the extended store is half written: every new vector is in a shard by then.
        ("embeddings:0:SIGKILL", 80),
        # kill -9 once the store holds the new rows, before clusters.csv lists them.
        ("placed:0:SIGKILL", 80),
    ],
)
def test_an_add_killed_then_run_again_adds_every_image_once(
    tmp_path: Path, photos: Path, kill_at: str, saved: int
) -> None:
    run_dir = tmp_path / "run"
    code, _, stderr = finish(driven(cluster_args(photos / "set0", run_dir, "--workers", "0")))
    assert code == 0, stderr
    clustered = (run_dir / "clusters.csv").read_bytes()
    new = [str(photos / "set1"), str(photos / "set2")]
    code, _, _ = finish(driven(["add", str(run_dir), *new, "--no-report", "--workers", "0", "--quiet"], kill_at))

    assert code == -signal.SIGKILL
    assert (run_dir / "clusters.csv").read_bytes() == clustered
    result = pixclust.add(run_dir, new, report=False, num_workers=0, quiet=True)
    assert result.n_extracted == 80 - saved and len(result.paths) == 80 and result.already == []
    table = pq.read_table(run_dir / "embeddings.parquet", columns=["path"]).column("path").to_pylist()
    assert sorted(table) == sorted(str(path) for path in photos.rglob("*.png"))
    listed = (run_dir / "clusters.csv").read_text().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in listed) == sorted(table)
    assert not (run_dir / "embeddings.partial").exists()


def processes_in_session(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Fields after the parenthesised command name: state, ppid, pgrp, session, ...
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_ctrl_c_from_the_terminal_with_decode_workers(
    tmp_path: Path, photos: Path, reference: dict[str, np.ndarray]
) -> None:
    """SIGINT to the whole process group, as a terminal sends it, while workers decode: no traceback, no orphans."""
    run_dir = tmp_path / "run"
    process = driven(
        cluster_args(photos, run_dir, "--workers", "2"), start_new_session=True, env={"BATCH_DELAY_S": "0.05"}
    )
    partial = run_dir / "embeddings.partial"
    while not any(partial.glob("part-*.parquet")) and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    code, _, stderr = finish(process)

    assert code == 130, stderr
    assert stderr.strip() == INTERRUPTED_MESSAGE
    deadline = time.monotonic() + 10
    while processes_in_session(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in_session(process.pid) == []
    saved = saved_rows(run_dir)
    # Signalled with most batches still to come (each is slowed), so it stopped mid-way, on a batch boundary.
    assert FLUSH_EVERY <= saved < N_IMAGES and saved % BATCH == 0
    resume_and_check(photos, run_dir, saved, reference)
