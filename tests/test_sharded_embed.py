"""pixclust embed-shards: images embedded by Ray actors into parts, kept in step with the folder, on a local Ray.

The parts must hold the local engine's vectors for exactly the images found, however the folder changed
since the last run, and a run stopped part-way must leave the last index whole and its new parts reusable.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from command_line import pixclust_process
from conftest import add_bad_files, write_digit_tree
from PIL import Image
from real_data import colour_at_random, grey_digits, write_image_tree
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

import pixclust
from pixclust.cli import app
from pixclust.distributed.parts import VectorParts
from pixclust.embedding.models import DEFAULT_MODEL
from pixclust.embedding.part_store import PARTS_INDEX, PartRows, plan_layout
from pixclust.errors import UsageError
from pixclust.names import unescape_name
from pixclust.runs import sharded_embed, sharded_hog
from pixclust.runs.sharded_embed import embed_shards


def stored(run_dir: Path) -> dict[str, np.ndarray]:
    """Every row of the run's parts, as the readers of its index see them: path -> vector."""
    data = VectorParts.plan(run_dir)
    table = data.read_rows(np.arange(data.n_rows))
    paths = [unescape_name(path) for path in table.column("path").to_pylist()]
    assert len(set(paths)) == len(paths)
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(paths), -1)
    return dict(zip(paths, vectors, strict=True))


def assert_local_vectors(run_dir: Path, images: Path, *, model: str = DEFAULT_MODEL) -> None:
    local = pixclust.embed(images, model=model, quiet=True)
    rows = stored(run_dir)
    assert sorted(rows) == sorted(local.paths)
    for path, vector in zip(local.paths, local.vectors, strict=True):
        cosine = float(vector @ rows[path] / np.linalg.norm(vector) / np.linalg.norm(rows[path]))
        assert cosine >= 0.999, path


def part_files(run_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(run_dir / "embeddings.parts") if name != PARTS_INDEX)


def assert_hog_mirrors(run_dir: Path, images: Path, *, model: str = "hog+outline") -> None:
    """The HOG view pairs with the parts row for row (same part names and rows) and holds the local HOG vectors
    (the digits are ink on paper, so by default HOG with each outline's HOG)."""
    view = run_dir / "views" / "hog"
    indexes = [json.loads((folder / "embeddings.parts" / PARTS_INDEX).read_text()) for folder in (run_dir, view)]
    assert indexes[0]["parts"] == indexes[1]["parts"] and indexes[1]["model"] == model
    assert part_files(view) == part_files(run_dir)
    embedding, hog = VectorParts.plan(run_dir), VectorParts.plan(view)
    assert [part.rows for part in embedding.parts] == [part.rows for part in hog.parts]
    rows = np.arange(embedding.n_rows)
    assert embedding.read_rows(rows, columns=["path"]).equals(hog.read_rows(rows, columns=["path"]))
    local = pixclust.embed(images, model=model, quiet=True)
    by_path = stored(view)
    assert sorted(by_path) == sorted(local.paths)
    for path, vector in zip(local.paths, local.vectors, strict=True):
        assert np.allclose(by_path[path], vector, atol=1e-6), path


def test_layout_keeps_whole_parts_and_rewrites_the_rest() -> None:
    def part(name: str, rows: list[tuple[str, str]]) -> PartRows:
        return PartRows(
            name,
            pa.table(
                {
                    "path": [path for path, _ in rows],
                    "content_hash": [digest for _, digest in rows],
                    "file_size": [1] * len(rows),
                    "mtime_ns": [2] * len(rows),
                }
            ),
        )

    parts = [
        part("a", [("x", "1"), ("y", "2")]),
        part("b", [("z", "3"), ("w", "4")]),
        part("c", [("v", "5")]),
        part("d", [("x", "1")]),
    ]
    files = [("x", "1", 1, 2), ("y", "2", 1, 2), ("z", "3", 1, 2), ("copy", "5", 1, 2), ("u", "5", 9, 9)]
    layout = plan_layout(parts, files)
    # a whole and in order; b lost w; c's content now lives at two new paths; d repeats a row a holds.
    assert layout.keep == ["a"]
    assert [(r.source, r.rows, r.paths, r.file_sizes) for r in layout.rewrites] == [
        ("b", [0], ["z"], [1]),
        ("c", [0, 0], ["copy", "u"], [1, 9]),
    ]
    with pytest.raises(KeyError):
        plan_layout(parts, [("new", "6", 1, 2)])


def test_parts_hold_the_local_engines_vectors_and_follow_the_folder(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_digit_tree(tmp_path / "images", per_class=12)
    bad = add_bad_files(images)
    # Small parts, so that a change touches some of them and leaves the others whole.
    monkeypatch.setattr(sharded_embed, "PART_WRITE_ROWS", 8)
    run_dir = tmp_path / "run"
    first = embed_shards(images, run_dir, batch_size=4, quiet=True)
    assert (first.rows, first.n_extracted, first.n_reused, first.parts) == (36, 36, 0, 5)
    assert sorted(Path(item.path).name for item in first.skipped) == sorted(bad)
    assert "corrupt or truncated" in (run_dir / "errors.csv").read_text()
    assert_local_vectors(run_dir, images)
    assert first.hog and first.hog_dir == run_dir / "views" / "hog"
    assert_hog_mirrors(run_dir, images)
    before = part_files(run_dir)
    hog_written = {name: os.stat(run_dir / "views" / "hog" / "embeddings.parts" / name).st_mtime_ns for name in before}

    again = embed_shards(images, run_dir, quiet=True)
    assert (again.n_extracted, again.n_reused, again.parts_rewritten) == (0, 36, 0)
    assert part_files(run_dir) == before
    assert {
        name: os.stat(run_dir / "views" / "hog" / "embeddings.parts" / name).st_mtime_ns for name in before
    } == hog_written

    # One file gone, one copied to a new name, one changed, one new picture.
    files = sorted(images.rglob("digit_*.png"))
    files[0].unlink()
    shutil.copyfile(files[1], images / "copy of one.png")
    with Image.open(files[2]) as picture:
        picture.rotate(90).save(files[2])
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(images / "ramp.png")
    changed = embed_shards(images, run_dir, quiet=True)
    assert (changed.rows, changed.n_extracted) == (37, 2)
    assert_local_vectors(run_dir, images)
    index = json.loads((run_dir / "embeddings.parts" / PARTS_INDEX).read_text())
    assert sorted(part["name"] for part in index["parts"]) == part_files(run_dir)
    assert index["rows"] == 37 and sum(part["rows"] for part in index["parts"]) == 37
    # Parts holding none of the changed files stay as they were; the others are written again, and the two
    # new vectors (the changed file, the new picture) make one new part.
    untouched = set(before) & set(part_files(run_dir))
    assert 0 < len(untouched) < len(before)
    assert changed.parts_rewritten == len(before) - len(untouched)
    assert len(part_files(run_dir)) == len(untouched) + changed.parts_rewritten + 1
    assert_hog_mirrors(run_dir, images)

    # Without the HOG view, none is left to pair with parts it no longer mirrors.
    plain = embed_shards(images, run_dir, hog=False, quiet=True)
    assert not plain.hog and plain.hog_dir is None
    assert not (run_dir / "views" / "hog" / "embeddings.parts" / PARTS_INDEX).exists()
    assert part_files(run_dir / "views" / "hog") == []


def test_a_run_stopped_before_its_index_keeps_the_last_one_and_its_parts_are_reused(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_digit_tree(tmp_path / "images", per_class=6)
    monkeypatch.setattr(sharded_embed, "PART_WRITE_ROWS", 4)
    run_dir = tmp_path / "run"
    embed_shards(images / "0", run_dir, quiet=True)
    index = (run_dir / "embeddings.parts" / PARTS_INDEX).read_bytes()

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sharded_embed, "commit_index", stopped)
        with pytest.raises(KeyboardInterrupt):
            embed_shards(images, run_dir, quiet=True)
    # The readers still see the last index's images, whole; the new parts wait beside them. The HOG view,
    # indexed first, now mirrors parts the embedding's index does not name: it is refused, not paired wrongly.
    assert (run_dir / "embeddings.parts" / PARTS_INDEX).read_bytes() == index
    assert len(stored(run_dir)) == 6
    with pytest.raises(UsageError, match="does not match the embeddings"):
        pixclust.cluster_shards(run_dir, tmp_path / "clusters", k=2, quiet=True)
    resumed = embed_shards(images, run_dir, quiet=True)
    assert (resumed.rows, resumed.n_extracted) == (18, 0)
    assert_local_vectors(run_dir, images)
    assert_hog_mirrors(run_dir, images)
    listed = {part["name"] for part in json.loads((run_dir / "embeddings.parts" / PARTS_INDEX).read_text())["parts"]}
    assert set(part_files(run_dir)) == listed


def test_the_parts_are_what_cluster_shards_and_duplicates_shards_read(ray_instance: Any, tmp_path: Path) -> None:
    images = write_digit_tree(tmp_path / "images", per_class=10)
    original = sorted(images.rglob("*.png"))[0]
    shutil.copyfile(original, images / "exact copy.png")
    run_dir = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["embed-shards", str(images), "--out", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert "31 images in 1 part of 1280-number vectors: 30 embedded, 1 reused, 0 skipped" in result.output

    clustered = pixclust.cluster_shards(run_dir, tmp_path / "clusters", k=3, quiet=True)
    assert clustered.summary["rows"] == 31 and clustered.summary["inputs"] == [
        str(run_dir / "embeddings.parts" / name) for name in part_files(run_dir)
    ]
    # The HOG view is joined as 'pixclust cluster' joins it: the same features chosen, the same clusters.
    assert clustered.summary["hog_inputs"] == [
        str(run_dir / "views" / "hog" / "embeddings.parts" / name) for name in part_files(run_dir)
    ]
    local_run = pixclust.run(pixclust.RunConfig(images, tmp_path / "local", k=3, report=False), quiet=True)
    with open(clustered.run_dir / "clusters.csv", newline="", encoding="utf-8") as stream:
        ours = {row["path"]: int(row["cluster_id"]) for row in csv.DictReader(stream)}
    assert clustered.summary["choice"]["representation"] == local_run.clustering.choice["representation"]
    assert adjusted_rand_score(
        local_run.clustering.labels, [ours[path] for path in local_run.embeddings.paths]
    ) == pytest.approx(1.0)
    found = pixclust.duplicates_shards(run_dir, tmp_path / "dupes", quiet=True)
    assert found.verified_files
    groups = [sorted(Path(found.rows.paths[row]).name for row in group.rows) for group in found.report.groups]
    assert [original.name, "exact copy.png"] in [sorted(group) for group in groups]

    # Look-alikes: every part searched on Ray gives what the local search gives on the same images.
    queries = [str(original), str(sorted(images.rglob("*.jpg"))[-1])]
    on_parts = pixclust.find_similar(run_dir, queries, top=5)
    local = pixclust.find_similar(pixclust.embed(images, quiet=True), queries, top=5)
    for sharded_answer, local_answer in zip(on_parts.answers, local.answers, strict=True):
        assert [match.path for match in sharded_answer] == [match.path for match in local_answer]
        assert np.allclose([m.similarity for m in sharded_answer], [m.similarity for m in local_answer], atol=1e-4)
    assert on_parts.answers[0][0].path == str(images / "exact copy.png")
    assert on_parts.answers[0][0].similarity == pytest.approx(1.0, abs=1e-5)
    assert str(original) not in [match.path for match in on_parts.answers[0]]
    result = runner.invoke(
        app, ["similar", queries[1], "--in", str(run_dir), "--top", "3", "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "q" / "similar.csv").read_text().splitlines()) == 4


def refused(arguments: list[str]) -> str:
    """The one-line message of a command the library refuses (the CLI prints it without a traceback)."""
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code != 0 and isinstance(result.exception, UsageError), result.output
    return str(result.exception)


def test_ink_on_paper_in_many_colours_reaches_the_network_as_grey_as_cluster_feeds_it(
    ray_instance: Any, tmp_path: Path
) -> None:
    grey, classes = grey_digits()
    rows = np.concatenate([np.flatnonzero(classes == digit)[:3] for digit in range(10)])
    images = write_image_tree(tmp_path / "images", colour_at_random(grey[rows], random_state=0), classes[rows])
    run_dir = tmp_path / "run"
    done = embed_shards(images, run_dir, quiet=True)
    assert done.ink is not None and done.ink.wanted and done.ink.read == 30
    index = json.loads((run_dir / "embeddings.parts" / PARTS_INDEX).read_text())
    assert index["model"] == "efficientnet-lite0+ink" and index["ink_sample"] == done.ink.to_dict()
    assert_local_vectors(run_dir, images, model="efficientnet-lite0+ink")
    assert_hog_mirrors(run_dir, images, model="hog+ink+outline")
    # The command line gives cluster-shards a list of inputs: one run folder among them still brings its HOG view.
    address = ray_instance.get_runtime_context().gcs_address
    clustered = CliRunner().invoke(
        app, ["cluster-shards", str(run_dir), "--out", str(tmp_path / "clustered"), "--k", "10", "--address", address]
    )
    assert clustered.exit_code == 0, clustered.output
    assert "(HOG vectors given)" in clustered.output
    summary = json.loads((tmp_path / "clustered" / "cluster_table" / "summary.json").read_text())
    assert summary["hog_inputs"] and summary["hog_inputs"][0].startswith(str(run_dir / "views" / "hog"))
    with pytest.raises(UsageError, match="ink='maybe' is not known; choose one of auto, on, off"):
        embed_shards(images, run_dir, ink="maybe", quiet=True)


def test_mistakes_are_one_line_and_leave_files_alone(ray_instance: Any, digit_run: Path, tmp_path: Path) -> None:
    images = write_digit_tree(tmp_path / "images", per_class=3)
    # A run of 'pixclust cluster' is not written into, nor the image folder, nor a folder that is not pixclust's.
    before = sorted(os.listdir(digit_run))
    assert "holds a run of 'pixclust cluster'" in refused(["embed-shards", str(images), "--out", str(digit_run)])
    assert sorted(os.listdir(digit_run)) == before
    assert "inside the image folder" in refused(["embed-shards", str(images), "--out", str(images / "0" / "run")])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert "not a pixclust run folder" in refused(["embed-shards", str(images), "--out", str(theirs)])
    assert os.listdir(theirs) == ["notes.txt"]

    run_dir = tmp_path / "run"
    embed_shards(images, run_dir, quiet=True)
    parts = run_dir / "embeddings.parts"
    # Ray cannot take a command line holding a name that is not UTF-8 (so a process of its own, whose command line
    # Ray records): one line, saying what to give instead.
    odd = images.parent / os.fsdecode(b"caf\xff.png")
    shutil.copyfile(next(images.rglob("*.png")), odd)
    stopped = pixclust_process("similar", odd, "--in", run_dir, errors="replace")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "holds a name that is not UTF-8; give the folder that holds" in stopped.stderr
    # A part swapped for a link is not read through; a damaged index is one line for its readers.
    (name,) = part_files(run_dir)
    target = tmp_path / "elsewhere.parquet"
    os.replace(parts / name, target)
    os.symlink(target, parts / name)
    with pytest.raises(UsageError, match="missing or a link"):
        VectorParts.plan(run_dir)
    again = embed_shards(images, run_dir, quiet=True)
    assert again.n_extracted == 9 and target.is_file() and pq.read_metadata(target).num_rows == 9
    assert not os.path.lexists(parts / name)
    (parts / PARTS_INDEX).write_text("{not json")
    with pytest.raises(UsageError, match="is damaged"):
        VectorParts.plan(run_dir)
    assert "is damaged" in refused(["cluster-shards", str(run_dir), "--out", str(tmp_path / "c")])
    # embed-shards itself writes a new index over a damaged one, reusing every part.
    assert embed_shards(images, run_dir, quiet=True).n_extracted == 0
    assert len(stored(run_dir)) == 9
    # The HOG view is not reached through a link either: the folder it pointed to is left alone.
    moved = tmp_path / "moved-view"
    os.replace(run_dir / "views" / "hog", moved)
    os.symlink(moved, run_dir / "views" / "hog")
    listed = sorted(os.listdir(moved / "embeddings.parts"))
    assert "is a link, where pixclust keeps the run's HOG view" in refused(
        ["embed-shards", str(images), "--out", str(run_dir)]
    )
    assert sorted(os.listdir(moved / "embeddings.parts")) == listed
    assert "are for the embedding parts" in refused(["similar", str(images), "--in", str(digit_run), "--address", "x"])


def test_an_image_hog_cannot_read_leaves_the_run_without_the_view_until_it_reads(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    images = write_digit_tree(tmp_path / "images", per_class=3)
    run_dir = tmp_path / "run"
    assert embed_shards(images, run_dir, quiet=True).hog
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(images / "ramp.png")

    def unreadable(embedded_part: str, max_pixels: int, hog_model: str) -> str:
        return "ramp.png (truncated)"

    with monkeypatch.context() as patch:
        patch.setattr(sharded_hog, "hog_rows", unreadable)
        stopped = embed_shards(images, run_dir, quiet=True)
    assert stopped.rows == 10 and not stopped.hog
    assert "no HOG view is kept" in caplog.text and "ramp.png (truncated) could not be read" in caplog.text
    assert not (run_dir / "views" / "hog" / "embeddings.parts" / PARTS_INDEX).exists()
    clustered = pixclust.cluster_shards(run_dir, tmp_path / "clusters", k=2, quiet=True)
    assert clustered.summary["hog_inputs"] is None
    # The HOG part already made for the unchanged images is reused; the view comes back whole.
    again = embed_shards(images, run_dir, quiet=True)
    assert again.hog and again.n_extracted == 0
    assert_hog_mirrors(run_dir, images)
