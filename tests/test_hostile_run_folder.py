"""The run folder tried as a hostile user would: what pixclust owns, one writer at a time, moves that cannot escape.

Each test is one way issue #15 found to lose or move a user's file. They drive
the real command line (``python -m pixclust``) on small real images with the
``pixels`` model, and compare the user's files byte for byte before and after.
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
import pytest
from command_line import pixclust
from conftest import tree_digest
from corpus import encode, quadrants

N_IMAGES = 12


def write_photos(root: Path, n: int = N_IMAGES) -> Path:
    for i in range(n):
        colours = ((i * 20 % 256, 40, 200 - i * 9), (30, i * 17 % 256, 90), (250, 250, 250), (0, 0, i * 11))
        folder = root / f"set{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo_{i:02d}.png").write_bytes(encode(quadrants(24 + i, 20, colours), "PNG"))
    return root


def cluster(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return pixclust(
        "cluster",
        source,
        "--out",
        out,
        "--model",
        "pixels",
        "--method",
        "kmeans",
        "--k",
        "2",
        "--no-report",
        "--quiet",
        *extra,
    )


def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    """A user's mistake: a non-zero exit and one line that says what, never a traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


def test_clustering_a_run_folders_own_clusters_into_it_is_refused(tmp_path: Path) -> None:
    """1a: ``pixclust cluster R/clusters --out R`` once deleted the images it was reading."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run, "--move").returncode == 0
    before = tree_digest(run / "clusters")

    refused(cluster(run / "clusters", run), "is inside the run folder")
    assert tree_digest(run / "clusters") == before


def test_a_folder_that_is_not_a_run_folder_is_never_written(tmp_path: Path) -> None:
    """1b: an existing --out with the user's own plots/ and clusters/ lost them."""
    photos, out = write_photos(tmp_path / "photos"), tmp_path / "mine"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "my_figure.png").write_bytes(b"a figure of mine")
    (out / "clusters").mkdir()
    (out / "clusters" / "notes.txt").write_text("my notes")
    before = tree_digest(out)

    refused(cluster(photos, out), "is not empty and is not a pixclust run folder")
    assert tree_digest(out) == before


@pytest.mark.slow
def test_a_rerun_keeps_what_the_user_added_to_a_run_folder(tmp_path: Path) -> None:
    """1b, inside a run folder: only what pixclust made there is replaced or removed."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert (
        pixclust(
            "cluster", photos, "--out", run, "--model", "pixels", "--method", "kmeans", "--k", "3", "--map", "pca", "-q"
        ).returncode
        == 0
    )
    (run / "plots" / "my_figure.png").write_bytes(b"a figure of mine")
    (run / "my_notes.txt").write_text("mine")

    # Another k: the montage of cluster_02 is stale and goes, the user's figure stays.
    assert (
        pixclust(
            "cluster", photos, "--out", run, "--model", "pixels", "--method", "kmeans", "--k", "2", "--map", "pca", "-q"
        ).returncode
        == 0
    )
    assert (run / "plots" / "my_figure.png").read_bytes() == b"a figure of mine"
    assert (run / "my_notes.txt").read_text() == "mine"
    assert not (run / "plots" / "montage_cluster_02.png").exists()
    assert (run / "plots" / "montage_cluster_01.png").is_file()

    (run / "clusters" / "cluster_00" / "notes.txt").write_text("my notes")
    refused(cluster(photos, run), "was not made by pixclust")
    assert (run / "clusters" / "cluster_00" / "notes.txt").read_text() == "my notes"


def test_moved_originals_are_kept_when_the_journal_is_deleted(tmp_path: Path) -> None:
    """1c: after --move, deleting moves.jsonl (it looks like a log) and running again deleted the originals."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run, "--move").returncode == 0
    (run / "moves.jsonl").unlink()
    before = tree_digest(run / "clusters")

    refused(cluster(tmp_path / "photos", run), "put there")
    assert tree_digest(run / "clusters") == before
    assert len(list((run / "clusters").rglob("*.png"))) == N_IMAGES


def test_moved_originals_are_kept_when_journal_and_manifest_are_deleted(tmp_path: Path) -> None:
    """1c, further: without journal and manifest, the images in clusters/ are not pixclust's to replace."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run, "--move").returncode == 0
    (run / "moves.jsonl").unlink()
    (run / ".pixclust-manifest.json").unlink()
    before = tree_digest(run / "clusters")

    refused(cluster(tmp_path / "photos", run), "was not made by pixclust")
    assert tree_digest(run / "clusters") == before


def test_a_run_folder_whose_manifest_is_deleted_takes_back_its_links(tmp_path: Path) -> None:
    """Deleting the manifest (it looks like a config file) makes pixclust re-adopt its links, not refuse forever."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run).returncode == 0
    (run / ".pixclust-manifest.json").unlink()

    assert cluster(photos, run, "--k", "3").returncode == 0
    assert len(list((run / "clusters").rglob("*.png"))) == N_IMAGES
    assert sorted(path.name for path in (run / "clusters").iterdir()) == ["cluster_00", "cluster_01", "cluster_02"]


def test_nothing_is_removed_through_a_linked_plots_folder(tmp_path: Path) -> None:
    """1d: with R/plots a link, the PNGs at its target were deleted."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run).returncode == 0
    elsewhere = tmp_path / "figures"
    elsewhere.mkdir()
    (elsewhere / "paper_figure.png").write_bytes(b"not pixclust's")
    (run / "plots").symlink_to(elsewhere)

    refused(pixclust("report", run, "-q"), "is a link")
    refused(cluster(photos, run), "is a link")
    assert [path.name for path in elsewhere.iterdir()] == ["paper_figure.png"]


def test_move_never_puts_images_outside_the_run_folder(tmp_path: Path) -> None:
    """1e: with R/clusters a link, --move put the images at its target, outside the run folder."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run).returncode == 0
    before = tree_digest(photos)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(run / "clusters", tmp_path / "old_clusters")
    (run / "clusters").symlink_to(elsewhere)

    refused(cluster(photos, run, "--move"), "is a link")
    assert tree_digest(photos) == before
    assert list(elsewhere.iterdir()) == []


def _wait_for(condition, process: subprocess.Popen[str], what: str) -> None:
    """Poll until ``condition()`` or the process ends; no fixed sleep decides the outcome."""
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"pixclust ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def _holds_lock(run: Path, pid: int) -> bool:
    lock = run / ".pixclust.lock"
    return lock.is_file() and f"pid {pid}" in lock.read_text()


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_holds_the_run_folder(tmp_path: Path) -> None:
    """2: two runs into one --out once mixed their files and swapped clusters/ over moved originals."""
    photos, other, run = write_photos(tmp_path / "photos"), write_photos(tmp_path / "other", 6), tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pixclust",
            "cluster",
            str(photos),
            "--out",
            str(run),
            "--model",
            "pixels",
            "--method",
            "kmeans",
            "--k",
            "2",
            "--move",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _holds_lock(run, first.pid), first, "it took the lock")
        # Stopped while it holds the folder: the second run meets the lock, not a race.
        first.send_signal(signal.SIGSTOP)
        second = cluster(other, run)
        refused(second, f"is being written by pixclust (pid {first.pid})")
        refused(pixclust("report", run, "-q"), f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err

    rows = (run / "clusters.csv").read_text().splitlines()[1:]
    assert len(rows) == N_IMAGES and all("other" not in row for row in rows)
    assert len(list((run / "clusters").rglob("*.png"))) == N_IMAGES


@pytest.mark.slow
def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    """2: a run killed with SIGKILL leaves no lock behind; the kernel releases it."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pixclust",
            "cluster",
            str(photos),
            "--out",
            str(run),
            "--model",
            "pixels",
            "--method",
            "kmeans",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: _holds_lock(run, first.pid), first, "it took the lock")
    first.kill()
    first.communicate(timeout=60)

    assert cluster(photos, run).returncode == 0


def test_what_a_run_killed_while_starting_leaves_does_not_lock_the_folder_out(tmp_path: Path) -> None:
    """2: killed right after taking the lock, while writing the marker: the next run goes ahead."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    run.mkdir()
    (run / ".pixclust.lock").write_text("pixclust (pid 1)\n")
    (run / "..pixclust-run.k9x2.tmp").write_text("")

    assert cluster(photos, run).returncode == 0


def test_an_output_folder_is_left_as_it_was_found(tmp_path: Path) -> None:
    """A command refused in the user's folder, or in one made for it, leaves no lock file and no empty folder."""
    from pixclust.runs.lock import holding

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    new = tmp_path / "new" / "out"
    for folder in (theirs, new):
        with pytest.raises(ValueError, match="refused"), holding(folder):
            assert (folder / ".pixclust.lock").is_file()
            raise ValueError("refused")
    assert os.listdir(theirs) == ["notes.txt"]
    assert os.listdir(tmp_path) == ["theirs"]

    with holding(new):
        (new / "result.csv").write_text("id\n")
    assert os.listdir(new) == ["result.csv"]


def _take_turns(folder: str, turns: int) -> int:
    """Hold ``folder`` ``turns`` times, each time making and removing a file no other holder may see; the clashes."""
    from pixclust.errors import RunFolderBusyError
    from pixclust.runs.lock import holding

    clashes, held = 0, 0
    while held < turns:
        try:
            with holding(Path(folder)):
                try:
                    os.close(os.open(os.path.join(folder, "only-holder"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    clashes += 1
                    continue
                time.sleep(0.001)
                os.unlink(os.path.join(folder, "only-holder"))
                held += 1
        except RunFolderBusyError:
            continue
    return clashes


def test_writers_that_remove_the_lock_file_as_they_go_never_hold_it_together(tmp_path: Path) -> None:
    """Four processes take an output folder's lock in turn, each removing the lock file on release: one at a time."""
    import multiprocessing

    folder = tmp_path / "out"
    folder.mkdir()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        clashes = pool.starmap(_take_turns, [(str(folder), 100)] * 4)
    assert clashes == [0, 0, 0, 0]
    assert os.listdir(folder) == []


def test_a_lock_file_removed_while_it_is_being_locked_is_not_taken_as_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its holder let go (and removed it) between this writer's open and lock, and a third writer made a new one."""
    import fcntl

    from pixclust.errors import RunFolderBusyError
    from pixclust.runs.lock import LOCK_FILE, hold_lock

    lock_file = tmp_path / LOCK_FILE
    real_flock = fcntl.flock
    third: list[int] = []

    def flock_after_the_file_changed_hands(descriptor: int, operation: int) -> None:
        if not third:
            os.unlink(lock_file)
            third.append(-1)  # before the third writer's hold_lock, which comes through here too
            third[0] = hold_lock(lock_file)
        real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_file_changed_hands)
    try:
        with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}"):
            hold_lock(lock_file)
    finally:
        os.close(third[0])


@pytest.mark.parametrize("spelling", ["dot-dot", "link"])
def test_a_run_folder_inside_the_images_is_refused_however_spelled(tmp_path: Path, spelling: str) -> None:
    """3: ``P/sub/..`` or a link to P slipped past the "run folder inside the source" check."""
    photos = write_photos(tmp_path / "photos")
    (photos / "sub").mkdir()
    if spelling == "dot-dot":
        source = photos / "sub" / ".."
    else:
        (tmp_path / "alias").symlink_to(photos)
        source = tmp_path / "alias"
    before = tree_digest(photos)

    refused(cluster(source, photos / "run", "--copy"), "is inside the image folder")
    assert tree_digest(photos) == before


def test_move_leaves_files_reached_through_a_linked_folder_where_they_are(tmp_path: Path) -> None:
    """4: --move followed a linked folder inside the source and moved files that live outside it."""
    photos = write_photos(tmp_path / "photos")
    outside = write_photos(tmp_path / "outside", 4)
    (photos / "linked").symlink_to(outside / "set0")
    before = tree_digest(outside)
    run = tmp_path / "run"

    result = cluster(photos, run, "--move")

    assert result.returncode == 0, result.stderr
    assert tree_digest(outside) == before
    moved = [path for path in (run / "clusters").rglob("*.png") if not path.is_symlink()]
    linked = [path for path in (run / "clusters").rglob("*.png") if path.is_symlink()]
    assert len(moved) == N_IMAGES and len(linked) == 2
    assert all(os.path.realpath(path).startswith(str(outside)) for path in linked)


def test_resume_move_refuses_a_crafted_journal(tmp_path: Path) -> None:
    """5: a crafted moves.jsonl line moved any file anywhere (e.g. into an autostart folder)."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run, "--move").returncode == 0
    victim = tmp_path / "home" / "secret.txt"
    victim.parent.mkdir()
    victim.write_text("the user's")
    autostart = tmp_path / "home" / "autostart"
    autostart.mkdir()
    journal = run / "moves.jsonl"
    lines = journal.read_text().splitlines()
    planned = [json.loads(line) for line in lines if '"move"' in line]

    crafted = {
        "to outside the run folder": {"move": len(planned), "from": str(victim), "to": str(autostart / "x.desktop")},
        "out through '..'": {
            "move": len(planned),
            "from": planned[0]["from"],
            "to": str(run / "clusters" / ".." / ".." / "home" / "y"),
        },
        "from outside the source": {
            "move": len(planned),
            "from": str(victim),
            "to": str(run / "clusters" / "cluster_00" / "z.txt"),
        },
    }
    for attack in crafted.values():
        journal.write_text(
            "\n".join([line for line in lines if '"finished"' not in line] + [json.dumps(attack)]) + "\n"
        )
        refused(pixclust("resume-move", run), "refuses a journal it did not write")
        assert victim.read_text() == "the user's" and list(autostart.iterdir()) == []
        assert not (run / "clusters" / "cluster_00" / "z.txt").exists()


def test_discovery_never_walks_into_a_run_folder(tmp_path: Path) -> None:
    """3: a run folder inside the images (made by another run) is not read back as images."""
    from pixclust.embedding.discover import discover_images

    photos = write_photos(tmp_path / "photos", 4)
    inner = photos / "runs" / "earlier"
    write_photos(inner / "clusters", 3)
    (inner / ".pixclust-run").write_text('{"pixclust_run_folder": 1}\n')

    found = discover_images(photos).files
    assert len(found) == 4 and not [path for path in found if "runs" in path.parts]


def test_duplicates_refuses_folders_that_would_put_files_at_risk(tmp_path: Path) -> None:
    """``duplicates --out`` and ``--move-copies`` keep every rule of a run folder, checked before any embedding."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    before = tree_digest(photos)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    np.save(tmp_path / "vectors.npy", np.eye(4, dtype=np.float32))

    refused(pixclust("duplicates", photos, "--move-copies", photos / "aside"), "is inside the image folder")
    refused(pixclust("duplicates", photos, "--out", photos / "run"), "is inside the image folder")
    refused(pixclust("duplicates", photos, "--out", mine), "is not empty and is not a pixclust run folder")
    refused(pixclust("duplicates", tmp_path / "vectors.npy", "--move-copies", tmp_path / "aside"), "name no folder")
    assert tree_digest(photos) == before and not (photos / "aside").exists() and not (photos / "run").exists()
    assert sorted(os.listdir(mine)) == ["notes.txt"]
    assert cluster(photos, run, "--move").returncode == 0
    refused(pixclust("duplicates", run, "--move-copies", run), "put there")
    # From a run folder, copies may come only from the folder its images were found in.
    refused(pixclust("duplicates", run, "--move-copies", photos / "aside"), "is inside the image folder")
    assert not (photos / "aside").exists()
    refused(pixclust("duplicates", write_photos(tmp_path / "other", 4), "--out", run), "is the run of")
    assert not (run / "duplicate_copies").exists() and not (run / "duplicates.csv").exists()


def test_a_journal_without_your_seal_moves_nothing(tmp_path: Path) -> None:
    """A crafted journal that stays inside its own source can still name your home as that source; the seal stops it."""
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    assert cluster(photos, run, "--move").returncode == 0
    home = tmp_path / "home"
    (home / "autostart").mkdir(parents=True)
    journal = run / "moves.jsonl"
    header = journal.read_text().splitlines()[0]
    planted = run / "clusters" / "cluster_00" / "evil.desktop"
    planted.write_text("[Desktop Entry]\nExec=harm\n")
    crafted = {**json.loads(header), "source": str(home)}
    crafted_move = {"move": 0, "from": str(home / "autostart" / "evil.desktop"), "to": str(planted)}
    journal.write_text(
        "\n".join([json.dumps(crafted), json.dumps(crafted_move), '{"done": 0}', '{"finished": 1}']) + "\n"
    )

    refused(pixclust("restore", run), "does not carry your seal")
    refused(pixclust("resume-move", run), "does not carry your seal")
    assert list((home / "autostart").iterdir()) == [] and planted.is_file()


def test_your_own_journal_from_another_machine_needs_your_word(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos, run = write_photos(tmp_path / "photos"), tmp_path / "run"
    before = tree_digest(photos)
    assert cluster(photos, run, "--move").returncode == 0
    monkeypatch.setenv("PIXCLUST_STATE", str(tmp_path / "another-machine"))

    refused(pixclust("restore", run), "add --trust-journal")
    assert len(list((run / "clusters").rglob("*.png"))) == N_IMAGES
    assert pixclust("restore", run, "--trust-journal").returncode == 0
    assert tree_digest(photos) == before


def test_a_copy_changed_since_it_was_embedded_is_not_moved_aside(tmp_path: Path) -> None:
    """An exact copy is known by its stored content; a file edited since may be a copy no more, so it stays."""
    photos, run, aside = write_photos(tmp_path / "photos"), tmp_path / "run", tmp_path / "aside"
    original = photos / "set0" / "photo_00.png"
    edited = photos / "set0" / "zz_copy.png"
    edited.write_bytes(original.read_bytes())
    assert cluster(photos, run).returncode == 0
    edited.write_bytes(now := (photos / "set1" / "photo_01.png").read_bytes())

    result = pixclust("duplicates", run, "--keep", "first-path", "--move-copies", aside)

    assert result.returncode == 0, result.stderr
    assert "changed since it was embedded" in result.stdout
    assert edited.read_bytes() == now and original.is_file()
    assert not list(aside.rglob("zz_copy.png"))
