"""Every awkward input from tests/corpus.py, through the installed command, as an unprivileged user.

Each file must end up used (at the right size, looking like the right
picture) or listed in errors.csv with the right reason; the run exits 0 with
its summary line, and not one byte of the source tree changes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tree_digest
from corpus import Corpus, build_corpus, encode, looks_like, quadrants

import pixclust
from pixclust.curation.export import safe_file_name
from pixclust.embedding import extraction
from pixclust.embedding.files import REASON_UNREADABLE
from pixclust.embedding.transforms import PixelTransform
from pixclust.runs.pipeline import RunConfig

# Root reads every file whatever its mode; without these two capabilities it
# obeys permissions like any user, while still owning the test's temp folders.
DROP_READ_ANYTHING = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def obeying_permissions() -> list[str]:
    """Command prefix under which mode-000 files really are unreadable (CI runs tests as root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.fail("tests run as root need setpriv (util-linux) to test unreadable files")
    return DROP_READ_ANYTHING


def relative_rows(csv_path: Path, root: Path) -> dict[str, dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as stream:
        return {os.path.relpath(row["path"], root): row for row in csv.DictReader(stream)}


@contextlib.contextmanager
def locked(paths: list[Path]) -> Iterator[None]:
    for path in paths:
        path.chmod(0)
    try:
        yield
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return build_corpus(tmp_path / "corpus")


@pytest.mark.slow
def test_every_awkward_file_is_used_or_skipped_with_its_reason(tmp_path: Path, corpus: Corpus) -> None:
    root, run_dir = corpus.root, tmp_path / "run"
    before = tree_digest(root)
    command = [
        *obeying_permissions(),
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
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--map",
        "pca",
        "--quiet",
    ]
    with locked(corpus.unreadable):
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"}
        )
    assert tree_digest(root) == before

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    n_used, n_skipped = len(corpus.usable), len(corpus.skipped)
    assert f"{n_used} images used, {n_skipped} skipped (see errors.csv)" in result.stdout

    errors = relative_rows(run_dir / "errors.csv", root)
    assert {path: row["reason"] for path, row in errors.items()} == corpus.skipped
    assert all(row["detail"] for row in errors.values())
    assert set(relative_rows(run_dir / "clusters.csv", root)) == set(corpus.usable)

    table = pq.read_table(run_dir / "embeddings.parquet").to_pylist()
    rows = {os.path.relpath(row["path"], root): row for row in table}
    assert set(rows) == set(corpus.usable)
    wrong = {}
    for path, usable in corpus.usable.items():
        row = rows[path]
        difference = looks_like(np.asarray(row["vector"]), usable, PixelTransform.side)
        if (row["width"], row["height"]) != usable.size or difference > usable.tolerance:
            wrong[path] = ((row["width"], row["height"]), usable.size, round(difference, 3))
    assert wrong == {}
    counts = json.loads((run_dir / "run.json").read_text())["counts"]
    assert counts["images_used"] == n_used and counts["files_skipped"] == n_skipped
    # Names with newlines, 255 bytes, twins in one cluster: each link is one entry of its cluster's folder.
    links = [path for path in (run_dir / "clusters").rglob("*") if path.is_symlink()]
    assert len(links) == n_used
    assert all(link.parent.parent == run_dir / "clusters" for link in links)
    assert {os.path.relpath(os.readlink(link), root) for link in links} == set(corpus.usable)


def test_a_folder_changing_under_the_run_is_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files vanish after the scan and after hashing, others appear: the run finishes and says which went missing."""
    root = tmp_path / "changing"
    root.mkdir()
    for n in range(24):
        (root / f"img_{n:02d}.png").write_bytes(encode(quadrants(20 + n, 20), "PNG"))
    gone_after_scan = [root / "img_03.png", root / "img_11.png"]
    gone_after_hashing = [root / "img_07.png", root / "img_20.png"]
    appeared = root / "late" / "new.png"
    real_discover, real_hash = extraction.discover_images, extraction.hash_files

    # The changes happen during the first pass (the embeddings); the second (the HOG view) sees the folder as left.
    def discover_then_change(*args, **kwargs):
        found = real_discover(*args, **kwargs)
        if not appeared.exists():
            for path in gone_after_scan:
                path.unlink()
            appeared.parent.mkdir()
            appeared.write_bytes(encode(quadrants(9, 9), "PNG"))
        return found

    def hash_then_change(*args, **kwargs):
        hashed = real_hash(*args, **kwargs)
        for path in gone_after_hashing:
            path.unlink(missing_ok=True)
        return hashed

    monkeypatch.setattr(extraction, "discover_images", discover_then_change)
    monkeypatch.setattr(extraction, "hash_files", hash_then_change)
    result = pixclust.run(RunConfig(str(root), str(tmp_path / "run"), model="pixels", k=2, report=False), quiet=True)

    errors = relative_rows(tmp_path / "run" / "errors.csv", root)
    vanished = sorted(str(path.relative_to(root)) for path in gone_after_scan + gone_after_hashing)
    assert sorted(errors) == vanished
    assert all(row["reason"] == REASON_UNREADABLE and "No such file" in row["detail"] for row in errors.values())
    assert len(result.embeddings) == 20
    assert str(appeared) not in result.embeddings.paths
    assert (tmp_path / "run" / "views" / "hog" / "embeddings.parquet").is_file()


@pytest.mark.slow
def test_files_churning_during_a_real_run_never_stop_it(tmp_path: Path) -> None:
    """A second thread keeps adding and deleting files while the command scans, hashes and embeds."""
    root = tmp_path / "busy"
    (root / "churn").mkdir(parents=True)
    stable = {f"stable_{n:03d}.png" for n in range(150)}
    for n, name in enumerate(sorted(stable)):
        (root / name).write_bytes(encode(quadrants(16 + n % 40, 24), "PNG"))
    picture = encode(quadrants(30, 30), "PNG")
    stop = threading.Event()
    churned: set[str] = set()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            path = root / "churn" / f"c{n:05d}.png"
            path.write_bytes(picture)
            churned.add(str(path.relative_to(root)))
            if n >= 3:
                (root / "churn" / f"c{n - 3:05d}.png").unlink()
            n += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pixclust",
                "cluster",
                str(root),
                "--out",
                str(tmp_path / "run"),
                "--model",
                "pixels",
                "--k",
                "2",
                "--batch-size",
                "8",
                "--workers",
                "2",
                "--no-report",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop.set()
        worker.join()

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    used = set(relative_rows(tmp_path / "run" / "clusters.csv", root))
    errors = relative_rows(tmp_path / "run" / "errors.csv", root)
    assert stable <= used
    assert used - stable <= churned and set(errors) <= churned
    # A file caught half-written or already deleted is skipped with a reason, never a crash.
    assert all(row["reason"] and row["detail"] for row in errors.values())


HOSTILE_NAMES = [
    "..",
    ".",
    "",
    " ",
    "...",
    "../../etc/passwd",
    "/etc/cron.d/job",
    "a/b",
    "..\\..\\windows",
    "\n",
    "nul\x00byte",
    "~",
    "-rf",
    "CON",
    "é" * 200 + ".png",
    "." * 300,
    "a." + "b" * 300,
    "名前/../x",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_file_name_is_one_harmless_entry(tmp_path: Path, name: str) -> None:
    safe = safe_file_name(name)
    assert safe not in {"", ".", ".."} and not {"/", "\\", "\x00", "\n"} & set(safe)
    assert len(safe.encode()) <= 200
    (tmp_path / safe).write_bytes(b"")
    assert [path.name for path in tmp_path.iterdir()] == [safe]


def test_hostile_class_labels_in_a_truth_csv_are_only_compared(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    labels = ["../../escape", "/etc/cron.d/job", "a\nb", "..", "名前/../x"]
    rows = ["path,label"]
    for n in range(10):
        (root / f"img_{n}.png").write_bytes(encode(quadrants(20 + n, 20), "PNG"))
        rows.append(f'img_{n}.png,"{labels[n % len(labels)]}"')
    truth = tmp_path / "truth.csv"
    truth.write_text("\n".join(rows) + "\n")
    before = {path for path in tmp_path.rglob("*")}

    config = RunConfig(str(root), str(tmp_path / "run"), model="pixels", k=2, truth=str(truth), report=False)
    result = pixclust.run(config, quiet=True)

    assert result.n_scored == 10 and result.scores is not None
    created = {path for path in tmp_path.rglob("*")} - before
    assert all(path.is_relative_to(tmp_path / "run") for path in created)
