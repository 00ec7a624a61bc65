"""``--move``: the one option that changes the source tree, killed with SIGKILL at every step and resumed.

At every moment each image must be whole (same bytes) at its source or at its
destination; ``pixclust resume-move`` then brings every one to its destination.
Moves within one file system are renames; from /dev/shm (a tmpfs) into the
test's folder they cross file systems and take the copy-verify-unlink path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from command_line import pixclust as pixclust_cli
from conftest import tree_digest
from corpus import encode, quadrants

import pixclust
from pixclust.curation.move import JOURNAL, check_no_moves, restore_moves, resume_moves
from pixclust.errors import UsageError
from pixclust.runs.folder import RunFolder
from pixclust.runs.pipeline import RunConfig

N_IMAGES = 30
BAD_FILES = {"bad/empty.jpg": b"", "bad/notes.png": b"not a picture\n"}

# Runs pixclust's CLI after arranging a real SIGKILL to this process at the step named by
# KILL_AT ("step:n"): once the plan is written, after the n-th rename before its done mark,
# halfway through the n-th cross-device copy, or after that copy is in place but before the
# original is unlinked. MOVE_DELAY_S slows each move so an outside kill lands mid-way.
DRIVER = r"""
import os, signal, sys, time
from pixclust.curation import move
from pixclust.cli import main

step, nth = (os.environ.get("KILL_AT") or "none:0").split(":")
nth = int(nth)
delay = float(os.environ.get("MOVE_DELAY_S", "0"))
calls = {"moved": 0, "partial": 0, "copied": 0}

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def counted(kind, real, after):
    def wrapper(*args, **kwargs):
        if not after and step == kind and calls[kind] == nth:
            kill()
        result = real(*args, **kwargs)
        if after and step == kind and calls[kind] == nth:
            after(*args)
        calls[kind] += 1
        return result
    return wrapper

def torn(source, partial):
    with open(partial, "r+b") as stream:
        stream.truncate(os.path.getsize(partial) // 2)
    kill()

real_carry_out, real_complete = move._carry_out, move._complete
def carry_out(*args, **kwargs):
    if step == "planned":
        kill()
    return real_carry_out(*args, **kwargs)
def complete(*args, **kwargs):
    time.sleep(delay)
    return real_complete(*args, **kwargs)
move._carry_out = carry_out
move._complete = counted("moved", complete, lambda *args: kill())
move.shutil.copy2 = counted("partial", move.shutil.copy2, torn)
move._unlink_source = counted("copied", move._unlink_source, None)

sys.argv = ["pixclust", *sys.argv[1:]]
main()
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_photos(root: Path) -> dict[str, str]:
    """Images in three folders (two share a file name) plus two bad files; returns relative path -> sha256."""
    for n in range(N_IMAGES):
        folder = root / f"set{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        colours = ((n * 8 % 256, 40, 200 - n * 5), (30, n * 7 % 256, 90), (250, 250, 250), (0, 0, n * 3))
        (folder / f"photo_{n // 3:02d}.png").write_bytes(encode(quadrants(24 + n, 20, colours), "PNG"))
    for relative, data in BAD_FILES.items():
        (root / relative).parent.mkdir(exist_ok=True)
        (root / relative).write_bytes(data)
    return {str(path.relative_to(root)): sha(path) for path in root.rglob("*") if path.is_file()}


def planned_moves(run_dir: Path) -> list[tuple[Path, Path]]:
    lines = (run_dir / JOURNAL).read_text().splitlines()
    return [(Path(entry["from"]), Path(entry["to"])) for entry in map(json.loads, lines) if "move" in entry]


def assert_nothing_lost(root: Path, run_dir: Path, originals: dict[str, str]) -> None:
    """Every image is whole at its source or its destination, and nothing else appeared in the source tree."""
    moves = planned_moves(run_dir) if (run_dir / JOURNAL).exists() else []
    for source, destination in moves:
        original = originals[str(source.relative_to(root))]
        whole = [path for path in (source, destination) if path.is_file() and sha(path) == original]
        assert whole, f"{source} is lost"
    now = {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
    assert now <= set(originals)
    moved = {str(source.relative_to(root)) for source, _ in moves}
    assert set(originals) - moved <= now


def assert_all_moved(root: Path, run_dir: Path, originals: dict[str, str]) -> None:
    moves = planned_moves(run_dir)
    assert len(moves) == N_IMAGES
    for source, destination in moves:
        assert not source.exists() and sha(destination) == originals[str(source.relative_to(root))]
        assert destination.parent.parent == run_dir / "clusters"
    assert {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()} == set(BAD_FILES)
    assert not [path for path in run_dir.rglob("*") if path.name.endswith(".pixclust-partial")]
    assert json.loads((run_dir / JOURNAL).read_text().splitlines()[-1]) == {"finished": N_IMAGES}


def cli(*args: str, env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **popen,
    )


def move_args(root: Path, run_dir: Path) -> list[str]:
    return [
        "cluster",
        str(root),
        "--out",
        str(run_dir),
        "--move",
        "--model",
        "pixels",
        "--k",
        "3",
        "--workers",
        "0",
        "--no-report",
        "--quiet",
    ]


@pytest.fixture(params=["same file system", "across file systems"])
def source_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "same file system":
        yield tmp_path / "photos"
        return
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's temporary folder")
    root = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pixclust-move-"))
    try:
        yield root / "photos"
    finally:
        shutil.rmtree(root)


def test_move_puts_each_image_in_its_cluster_folder_and_guards_them(tmp_path: Path, source_root: Path) -> None:
    originals = write_photos(source_root)
    run_dir = tmp_path / "run"
    result = pixclust.run(
        RunConfig(str(source_root), str(run_dir), model="pixels", k=3, move=True, report=False), quiet=True
    )

    assert result.moves is not None and result.moves.moved == N_IMAGES and result.moves.left == []
    assert_all_moved(source_root, run_dir, originals)
    twins = {destination.name for _, destination in planned_moves(run_dir)}
    assert {"photo_00.png", "photo_00~2.png"} <= twins
    # A later run into this folder would replace clusters/, where the originals now live.
    with pytest.raises(UsageError, match="put there"):
        pixclust.run(RunConfig(str(source_root), str(run_dir), model="pixels"), quiet=True)
    with pytest.raises(UsageError, match="copy=True and move=True"):
        RunConfig(str(source_root), str(tmp_path / "other"), copy=True, move=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source_root", "kill_at"),
    [
        ("same file system", "planned:0"),
        ("same file system", "moved:17"),
        ("across file systems", "moved:5"),
        ("across file systems", "partial:4"),
        ("across file systems", "copied:9"),
    ],
    indirect=["source_root"],
)
def test_sigkill_mid_move_loses_nothing_and_resume_finishes(tmp_path: Path, source_root: Path, kill_at: str) -> None:
    originals = write_photos(source_root)
    run_dir = tmp_path / "run"

    process = cli(*move_args(source_root, run_dir), env={"KILL_AT": kill_at})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    assert_nothing_lost(source_root, run_dir, originals)
    with pytest.raises(UsageError, match=f"did not finish; run: pixclust resume-move {run_dir}"):
        pixclust.run(RunConfig(str(source_root), str(run_dir), model="pixels", move=True), quiet=True)

    resumed = pixclust_cli("resume-move", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{N_IMAGES} images moved" in resumed.stdout
    assert_all_moved(source_root, run_dir, originals)

    assert resume_moves(run_dir).moved == N_IMAGES
    assert_all_moved(source_root, run_dir, originals)


@pytest.mark.slow
def test_sigkill_from_outside_while_moving(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    originals = write_photos(root)
    run_dir = tmp_path / "run"
    process = cli(*move_args(root, run_dir), env={"MOVE_DELAY_S": "0.05"})
    journal = run_dir / JOURNAL
    while process.poll() is None and (not journal.exists() or journal.read_text().count('"done"') < 5):
        time.sleep(0.01)
    process.kill()
    process.communicate(timeout=60)

    assert_nothing_lost(root, run_dir, originals)
    resumed = pixclust_cli("resume-move", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_moved(root, run_dir, originals)


def test_the_source_tree_is_untouched_without_move(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_photos(root)
    before = tree_digest(root)
    pixclust.run(RunConfig(str(root), str(tmp_path / "run"), model="pixels", k=3, report=False), quiet=True)
    assert tree_digest(root) == before
    assert not (tmp_path / "run" / JOURNAL).exists()


def test_a_linked_image_is_linked_not_moved(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_photos(root)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(encode(quadrants(50, 50), "PNG"))
    (root / "linked.png").symlink_to(os.path.relpath(outside, root))
    run_dir = tmp_path / "run"

    result = pixclust.run(RunConfig(str(root), str(run_dir), model="pixels", k=3, move=True, report=False), quiet=True)

    assert result.moves is not None and result.moves.moved == N_IMAGES and result.moves.left == []
    assert (root / "linked.png").is_symlink() and outside.is_file()
    [link] = [path for path in (run_dir / "clusters").rglob("linked.png")]
    assert link.is_symlink() and link.read_bytes() == outside.read_bytes()
    assert len(planned_moves(run_dir)) == N_IMAGES


def test_resume_after_a_kill_tore_the_last_journal_line(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    originals = write_photos(root)
    run_dir = tmp_path / "run"
    pixclust.run(RunConfig(str(root), str(run_dir), model="pixels", k=3, move=True, report=False), quiet=True)
    journal = run_dir / JOURNAL
    # As if killed after three more moves, before their marks, while writing the next mark.
    lines = [line for line in journal.read_text().splitlines() if "finished" not in line][:-3]
    journal.write_text("\n".join(lines) + '\n{"do')

    with pytest.raises(UsageError, match="did not finish"), RunFolder.open(run_dir).writing() as folder:
        check_no_moves(folder)
    report = resume_moves(run_dir)

    assert report.moved == N_IMAGES and report.left == []
    assert_all_moved(root, run_dir, originals)
    assert all(json.loads(line) for line in journal.read_text().splitlines())


def test_restore_puts_every_moved_image_back_and_frees_the_run_folder(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_photos(root)
    before = tree_digest(root)
    run_dir = tmp_path / "run"
    pixclust.run(RunConfig(str(root), str(run_dir), model="pixels", k=3, move=True, report=False), quiet=True)
    # Someone put a new picture where a moved one was: it is theirs, so that image stays in the run folder.
    first_source, first_destination = planned_moves(run_dir)[0]
    first_source.write_bytes(b"a different picture")

    with pytest.raises(UsageError, match="restore"):
        pixclust.run(RunConfig(str(root), str(run_dir), model="pixels", k=3, move=True), quiet=True)
    blocked = restore_moves(run_dir)
    assert blocked.restored and blocked.moved == N_IMAGES - 1 and len(blocked.left) == 1
    assert "other content" in blocked.left[0][1] and first_destination.is_file()
    with (
        pytest.raises(UsageError, match="did not finish; run: pixclust resume-move"),
        RunFolder.open(run_dir).writing() as folder,
    ):
        check_no_moves(folder)

    first_source.unlink()
    restored = pixclust_cli("resume-move", run_dir)
    assert restored.returncode == 0, restored.stderr
    assert f"{N_IMAGES} images moved back to where they were" in restored.stdout
    assert tree_digest(root) == before
    assert not (run_dir / "clusters").exists()
    assert json.loads((run_dir / JOURNAL).read_text().splitlines()[-1]) == {"restored_all": N_IMAGES}
    assert restore_moves(run_dir).moved == N_IMAGES and tree_digest(root) == before

    again = pixclust.run(RunConfig(str(root), str(run_dir), model="pixels", k=3, move=True, report=False), quiet=True)
    assert again.moves is not None and again.moves.moved == N_IMAGES


@pytest.mark.slow
def test_duplicate_copies_move_aside_and_back_through_kills(tmp_path: Path) -> None:
    """``duplicates --move-copies`` and ``restore``, each killed half way and resumed: no file is ever lost."""
    from real_data import write_duplicate_set

    root = tmp_path / "photos"
    write_duplicate_set(root, distractors=0, tiles=("astronaut-r0c0", "coffee-r0c1"))
    originals = {str(path.relative_to(root)): sha(path) for path in root.rglob("*") if path.is_file()}
    before = tree_digest(root)
    run_dir, aside = tmp_path / "run", tmp_path / "aside"
    # Embedded once here, so that the killed commands spend their time moving.
    found = pixclust.find_duplicate_images(root, out=run_dir)
    keepers = {found.embeddings.paths[group.keeper] for group in found.report.groups}
    copies = {found.embeddings.paths[row] for group in found.report.groups for row in group.rows} - keepers
    assert len(found.report.groups) == 2 and len(copies) >= 14

    args = ("duplicates", str(root), "--out", str(run_dir), "--move-copies", str(aside))
    process = cli(*args, env={"KILL_AT": "moved:5"})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    assert_nothing_lost(root, aside, originals)
    with pytest.raises(UsageError, match="did not finish; run: pixclust resume-move"):
        pixclust.find_duplicate_images(root, out=run_dir, move_copies=aside)

    resumed = subprocess.run(
        [sys.executable, "-m", "pixclust", "resume-move", str(aside)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert {str(source) for source, _ in planned_moves(aside)} == copies
    for source, destination in planned_moves(aside):
        assert not source.exists() and sha(destination) == originals[str(source.relative_to(root))]
        assert destination.parent.parent == aside / "duplicate_copies"
    assert all(os.path.isfile(keeper) for keeper in keepers)

    process = cli("restore", str(aside), env={"KILL_AT": "moved:3"})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    assert_nothing_lost(root, aside, originals)
    resumed = subprocess.run(
        [sys.executable, "-m", "pixclust", "resume-move", str(aside)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert tree_digest(root) == before and not (aside / "duplicate_copies").exists()
    # The duplicates run embedded into the run folder's store, so clustering the folder there embeds nothing.
    clustered = pixclust.run(RunConfig(str(root), str(run_dir), k=2, report=False), quiet=True)
    assert clustered.embeddings.n_extracted == 0 and len(clustered.embeddings) == len(originals)
