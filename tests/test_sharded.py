"""pixclust cluster-shards and duplicates-shards: embeddings read part by part by Ray tasks on a local Ray instance.

The agreement with the local pipelines on real images (the digits and
Fashion-MNIST, embedded by the default model) is in the slow tests at the end;
the rest uses the digits' 64 pixels as vectors, which cluster in seconds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from real_data import write_duplicate_set
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

import pixclust
from pixclust.cli import app
from pixclust.clustering.metrics import cluster_accuracy
from pixclust.clustering.placement import ClusterModel
from pixclust.curation.duplicates import find_duplicates
from pixclust.curation.lookalikes import write_duplicates_csv
from pixclust.distributed import duplicates as sharded_duplicates
from pixclust.distributed.duplicates import content_groups
from pixclust.distributed.parts import Segment, VectorParts
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.names import from_cell
from pixclust.report import sharded_view
from pixclust.runs import sharded
from pixclust.runs.folder import RunFolder
from pixclust.runs.pipeline import embed


def write_shards(folder: Path, paths: list[str], vectors: np.ndarray, *, files: int = 3, group_rows: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, rows in enumerate(np.array_split(np.arange(len(paths)), files)):
        table = pa.table(
            {
                "path": [paths[row] for row in rows],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), vectors.shape[1]),
            }
        )
        pq.write_table(table, folder / f"shard-{index}.parquet", row_group_size=group_rows)
    return folder


@pytest.fixture(scope="module")
def digit_pixels() -> tuple[list[str], np.ndarray, np.ndarray]:
    digits = load_digits()
    # Names a spreadsheet would take for formulas, and a byte that is not UTF-8, as store paths escape it.
    paths = [f"=digits/{index:04d}.png" if index % 7 else f"digits/\\xff{index:04d}.png" for index in range(1797)]
    return paths, digits.data.astype(np.float32), digits.target


@pytest.fixture(scope="module")
def pixel_shards(
    tmp_path_factory: pytest.TempPathFactory, digit_pixels: tuple[list[str], np.ndarray, np.ndarray]
) -> Path:
    paths, vectors, _ = digit_pixels
    return write_shards(tmp_path_factory.mktemp("shards"), paths, vectors)


def table_labels(run_dir: Path) -> np.ndarray:
    parts = sorted(str(part) for part in (run_dir / "cluster_table").glob("part-*.parquet"))
    return pq.read_table(parts, columns=["cluster_id"]).column("cluster_id").to_numpy()


def test_parts_are_whole_row_groups_in_file_order(pixel_shards: Path) -> None:
    data = VectorParts.plan(pixel_shards, part_rows=250)
    assert (data.n_rows, data.dim, len(data.files)) == (1797, 64, 3)
    # 599 rows a file in groups of 100: two parts of 200 and one of 199 (a group never split, never over 250).
    assert [part.rows for part in data.parts] == [200, 200, 199] * 3
    assert [part.offset for part in data.parts] == list(np.cumsum([0] + [200, 200, 199] * 3)[:-1])
    assert sum(part.n_groups for part in data.parts) == 18


def test_inputs_that_cannot_be_clustered_are_one_line_each(tmp_path: Path, pixel_shards: Path) -> None:
    other = tmp_path / "other"
    write_shards(other, ["a", "b"], np.ones((2, 8), np.float32), files=1)
    pq.write_table(pa.table({"path": ["a"], "embedding": [1.0]}), tmp_path / "columns.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    (tmp_path / "empty").mkdir()
    cases = {
        "holds vectors of 8 numbers": [pixel_shards, other],
        "no 'vector' column": [tmp_path / "columns.parquet"],
        "not a readable Parquet file": [tmp_path / "text.parquet"],
        "holds no .parquet files": [tmp_path / "empty"],
        "is not a file or folder": [tmp_path / "missing"],
    }
    for message, source in cases.items():
        with pytest.raises(UsageError, match=message) as raised:
            VectorParts.plan(source)
        assert "\n" not in str(raised.value)


def test_segments_find_any_run_of_rows_across_files() -> None:
    data = VectorParts((), 900, 4, ("a", "b", "c"), ((100, 100, 100), (250, 50), (300,)))
    assert data.segments(150, 250) == (Segment("a", (1, 2), 50, 100),)
    assert data.segments(250, 700) == (
        Segment("a", (2,), 50, 50),
        Segment("b", (0, 1), 0, 300),
        Segment("c", (0,), 0, 100),
    )
    assert data.segments(899, 900) == (Segment("c", (0,), 299, 1),)


def test_hog_rows_must_be_the_same_images_in_the_same_order(
    ray_instance: Any, pixel_shards: Path, digit_pixels: tuple[list[str], np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    paths, vectors, _ = digit_pixels
    shuffled = np.random.default_rng(0).permutation(len(paths))
    other_order = write_shards(tmp_path / "shuffled", [paths[row] for row in shuffled], vectors[shuffled], files=2)
    with pytest.raises(UsageError, match="name other images than its embeddings") as raised:
        pixclust.cluster_shards(pixel_shards, tmp_path / "run", k=3, hog=other_order, quiet=True)
    assert "\n" not in str(raised.value)
    fewer = write_shards(tmp_path / "fewer", paths[:100], vectors[:100], files=1)
    with pytest.raises(UsageError, match="the HOG files hold 100 rows and the embeddings 1,797"):
        pixclust.cluster_shards(pixel_shards, tmp_path / "run", k=3, hog=fewer, quiet=True)
    # The same rows in other files and row groups pair; the fixed pipeline does not read them at all.
    regrouped = write_shards(tmp_path / "regrouped", paths, vectors, files=4, group_rows=77)
    pixclust.cluster_shards(pixel_shards, tmp_path / "run", k=3, hog=regrouped, quiet=True)
    pixclust.cluster_shards(pixel_shards, tmp_path / "fixed", k=3, hog=other_order, pipeline="fixed", quiet=True)


def test_fixed_pipeline_on_every_row_is_the_local_one(
    ray_instance: Any, pixel_shards: Path, digit_pixels: tuple[list[str], np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    paths, vectors, _ = digit_pixels
    result = pixclust.cluster_shards(pixel_shards, tmp_path / "run", k=10, pipeline="fixed", quiet=True)
    local = pixclust.cluster(vectors, k=10, pipeline="fixed")
    np.testing.assert_array_equal(table_labels(tmp_path / "run"), local.labels)
    summary = json.loads((tmp_path / "run" / "cluster_table" / "summary.json").read_text())
    assert summary == result.summary
    assert (summary["rows"], summary["sample_rows"], summary["clusters"]) == (1797, 1797, 10)
    assert summary["sizes"] == np.bincount(local.labels).tolist()
    assert summary["inertia"] == pytest.approx(float(np.sum(local.distances**2)), rel=1e-4)

    with open(tmp_path / "run" / "clusters.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [from_cell(row["path"]) for row in rows] == [pixclust_name(path) for path in paths]
    assert rows[1]["path"].startswith("'=")
    assert [int(row["cluster_id"]) for row in rows] == local.labels.tolist()
    assert {row["cluster"] for row in rows} == {f"cluster_{n:02d}" for n in range(10)}
    np.testing.assert_allclose([float(row["distance"]) for row in rows], local.distances, atol=1e-4)
    np.testing.assert_allclose(
        np.abs([[float(row["x"]), float(row["y"])] for row in rows]), np.abs(local.coords_2d), atol=1e-4
    )
    # The saved model places the embeddings as the table does.
    model = ClusterModel.load(tmp_path / "run" / "cluster_model.npz")
    np.testing.assert_array_equal(model.predict(vectors), local.labels)


def pixclust_name(stored: str) -> str:
    """The file name a store's escaped path stands for (a byte that is not UTF-8 is written \\xNN)."""
    from pixclust.names import unescape_name

    return unescape_name(stored)


def test_fit_on_a_sample_places_every_row(ray_instance: Any, pixel_shards: Path, tmp_path: Path) -> None:
    digits = load_digits()
    result = pixclust.cluster_shards(
        pixel_shards, tmp_path / "run", k=10, pipeline="fixed", sample_size=600, quiet=True
    )
    labels = table_labels(tmp_path / "run")
    assert result.summary["sample_rows"] == 600 and len(labels) == 1797
    assert np.bincount(labels).tolist() == result.summary["sizes"]
    # Fitted on a third of the rows, the clusters still agree with the local fit on all of them
    # (ARI 0.78-0.89 over seeds 0-3 of the sample).
    local = pixclust.cluster(digits.data.astype(np.float32), k=10, pipeline="fixed")
    assert adjusted_rand_score(local.labels, labels) >= 0.75


def test_a_run_folder_given_stands_for_its_embeddings(ray_instance: Any, digit_run: Path, tmp_path: Path) -> None:
    run_copy = tmp_path / "run"
    shutil.copytree(digit_run, run_copy)
    # A run folder holds other Parquet files (maps, thumbnails, duplicate groups) beside its embeddings.
    pq.write_table(pa.table({"fingerprint": ["x"]}), run_copy / "maps.parquet")
    result = pixclust.cluster_shards(run_copy, tmp_path / "out", k=3, pipeline="fixed", quiet=True)
    assert result.summary["inputs"] == [str(run_copy / "embeddings.parquet")]
    assert result.summary["rows"] == 180
    # A run folder pixclust made but never embedded into.
    empty = RunFolder.open(tmp_path / "empty_run")
    with empty.writing():
        pass
    with pytest.raises(UsageError, match=r"has no embeddings\.parquet; run 'pixclust cluster' into it first"):
        pixclust.cluster_shards(empty.root, tmp_path / "out", k=3, quiet=True)


def test_a_second_run_replaces_only_its_own_files(ray_instance: Any, pixel_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    pixclust.cluster_shards(pixel_shards, out, k=4, pipeline="fixed", quiet=True)
    (out / "cluster_table" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"notes\.txt was not made by pixclust"):
        pixclust.cluster_shards(pixel_shards, out, k=6, pipeline="fixed", quiet=True)
    assert (out / "cluster_table" / "notes.txt").read_text() == "mine"
    assert json.loads((out / "cluster_table" / "summary.json").read_text())["clusters"] == 4
    os.unlink(out / "cluster_table" / "notes.txt")
    pixclust.cluster_shards(pixel_shards, out, k=6, pipeline="fixed", quiet=True)
    assert json.loads((out / "cluster_table" / "summary.json").read_text())["clusters"] == 6
    assert sorted(os.listdir(out / "cluster_table")) == [*(f"part-{n:05d}.parquet" for n in range(3)), "summary.json"]


def test_a_large_table_drops_the_csv_a_smaller_run_wrote(
    ray_instance: Any, pixel_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    pixclust.cluster_shards(pixel_shards, out, k=3, pipeline="fixed", quiet=True)
    assert (out / "clusters.csv").is_file()
    monkeypatch.setattr(sharded, "CSV_MAX_ROWS", 1000)
    pixclust.cluster_shards(pixel_shards, out, k=3, pipeline="fixed", quiet=True)
    assert not (out / "clusters.csv").exists()
    assert len(table_labels(out)) == 1797


def test_run_folders_it_must_not_write_are_refused(
    ray_instance: Any, pixel_shards: Path, digit_run: Path, tmp_path: Path
) -> None:
    before = sorted(os.listdir(digit_run))
    with pytest.raises(UsageError, match=r"holds a run of 'pixclust cluster' \(run.json\)"):
        pixclust.cluster_shards(pixel_shards, digit_run, k=3, quiet=True)
    assert sorted(os.listdir(digit_run)) == before
    inside = tmp_path / "run"
    pixclust.cluster_shards(pixel_shards, inside, k=3, pipeline="fixed", quiet=True)
    shutil.copytree(pixel_shards, inside / "vectors")
    with pytest.raises(UsageError, match="are inside the run folder"):
        pixclust.cluster_shards(inside / "vectors", inside, k=3, quiet=True)
    user_folder = tmp_path / "user"
    user_folder.mkdir()
    (user_folder / "photo.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"not a pixclust run folder|is not empty"):
        pixclust.cluster_shards(pixel_shards, user_folder, k=3, quiet=True)
    assert os.listdir(user_folder) == ["photo.jpg"]


def test_a_part_that_cannot_be_read_stops_the_run_and_keeps_the_last_table(
    ray_instance: Any, digit_pixels: tuple[list[str], np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    paths, vectors, _ = digit_pixels
    shards = write_shards(tmp_path / "shards", paths, vectors)
    out = tmp_path / "run"
    pixclust.cluster_shards(shards, out, k=3, pipeline="fixed", quiet=True)
    table_before = {name: (out / "cluster_table" / name).read_bytes() for name in os.listdir(out / "cluster_table")}
    # Footers fine when the parts are planned; a task then finds vectors holding NaN.
    broken = vectors.copy()
    broken[-1, 0] = np.nan
    write_shards(shards, paths, broken)
    with pytest.raises(UsageError, match=r"shard-2\.parquet has vectors holding NaN") as raised:
        pixclust.cluster_shards(shards, out, k=4, pipeline="fixed", quiet=True)
    assert "\n" not in str(raised.value)
    assert {
        name: (out / "cluster_table" / name).read_bytes() for name in os.listdir(out / "cluster_table")
    } == table_before
    assert not [name for name in os.listdir(out) if name.startswith(".pixclust-staging")]


def test_settings_and_rows_it_cannot_use_are_one_line(
    ray_instance: Any, pixel_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # Settings are refused before any task reads a row.
    monkeypatch.setattr(ray, "remote", lambda **_: pytest.fail("a task was started"))
    for settings, message in (
        ({"k": 5000}, "k=5000 is more than the 1797 images"),
        ({"k": 50, "sample_size": 40}, "k=50 is more than the 40 rows of the sample"),
        ({"k": 0}, "k=0 is not allowed"),
        ({"k_range": (5, 3)}, r"k_range=\(5, 3\) cannot be scanned"),
        ({"pipeline": "hdbscan"}, "pipeline 'hdbscan' is not known"),
    ):
        with pytest.raises(UsageError, match=message):
            pixclust.cluster_shards(pixel_shards, tmp_path / "run", quiet=True, **settings)
    monkeypatch.undo()
    nameless = tmp_path / "nameless.parquet"
    pq.write_table(
        pa.table(
            {"path": ["a", None], "vector": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0], pa.float32()), 1)}
        ),
        nameless,
    )
    with pytest.raises(UsageError, match="has rows without a path"):
        pixclust.cluster_shards(nameless, tmp_path / "run", k=2, pipeline="fixed", quiet=True)


def test_a_second_writer_waits_its_turn(ray_instance: Any, pixel_shards: Path, tmp_path: Path) -> None:
    from pixclust.errors import RunFolderBusyError
    from pixclust.runs.folder import LOCK_FILE
    from pixclust.runs.lock import hold_lock

    out = tmp_path / "run"
    out.mkdir()
    held = hold_lock(out / LOCK_FILE)
    try:
        with pytest.raises(RunFolderBusyError):
            pixclust.cluster_shards(pixel_shards, out, k=3, pipeline="fixed", quiet=True)
    finally:
        os.close(held)
    assert not (out / "cluster_table").exists()


NO_CPU_DRIVER = """
import sys, ray, pixclust
ray.init(num_cpus=0, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
try:
    pixclust.cluster_shards(sys.argv[1], sys.argv[2], k=3, pipeline="fixed", ray_wait=2, quiet=True)
except pixclust.PixclustError as error:
    print(type(error).__name__, error.exit_code, error)
"""


@pytest.mark.slow
def test_a_cluster_without_cpus_stops_the_run_instead_of_waiting(pixel_shards: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_CPU_DRIVER, str(pixel_shards), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.stdout.startswith(
        "ClusterUnavailableError 3 the Ray cluster has had no CPU for pixclust's tasks for 2 s"
    )
    assert "1 node of 0 CPUs" in done.stdout
    assert not (tmp_path / "run" / "cluster_table").exists()


def test_cli_clusters_and_says_mistakes_in_one_line(ray_instance: Any, pixel_shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    address = ray_instance.get_runtime_context().gcs_address
    done = runner.invoke(
        app,
        [
            "cluster-shards",
            str(pixel_shards),
            "--out",
            str(tmp_path / "run"),
            "--k",
            "5",
            "--pipeline",
            "fixed",
            "--address",
            address,
            "--quiet",
        ],
    )
    assert done.exit_code == 0, done.output
    assert "1,797 embeddings in 5 clusters" in done.output
    wrong = runner.invoke(app, ["cluster-shards", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run2")])
    assert wrong.exit_code != 0
    assert isinstance(wrong.exception, UsageError) and "is not a file or folder" in str(wrong.exception)


def report_data(run_dir: Path) -> dict[str, Any]:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    start = page.index('id="report-data">') + len('id="report-data">')
    return json.loads(page[start : page.index("</script>", start)])


def test_report_of_a_sharded_run_shows_a_sample(
    ray_instance: Any,
    digit_pixels: tuple[list[str], np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths, vectors, _ = digit_pixels
    shards = write_shards(tmp_path / "shards", paths, vectors)
    run = pixclust.cluster_shards(shards, tmp_path / "run", k=5, pipeline="fixed", quiet=True)
    monkeypatch.setattr(sharded_view, "REPORT_SAMPLE", 600)

    pixclust.build_report(tmp_path / "run", maps=["pca"], quiet=True)

    data = report_data(tmp_path / "run")
    assert data["sample_of"] == 1797 and len(data["points"]["path"]) == 600
    assert ["images", "1,797 (600 shown: a uniform sample)"] in data["summary"]
    assert ["duplicate groups", "not looked for (pixclust duplicates-shards)"] in data["summary"]
    assert ["fitted on", "1,797 images (a uniform sample, on Ray)"] in data["summary"]
    # Cluster sizes are the whole run's; every image shown is in the cluster the run's table gives it.
    assert [cluster["size"] for cluster in data["clusters"]] == run.summary["sizes"]
    with open(tmp_path / "run" / "clusters.csv", newline="", encoding="utf-8") as stream:
        cluster_of = {from_cell(row["path"]): int(row["cluster_id"]) for row in csv.DictReader(stream)}
    shown = [pixclust_name(path) for path in data["points"]["path"]]
    assert len(set(shown)) == 600
    assert [cluster_of[path] for path in shown] == data["points"]["cluster"]
    assert data["duplicates"]["groups"] == [] and "duplicates-shards" in data["duplicates"]["headline"]
    assert data["thumbs"] == []  # the vectors name no image files
    montages = [f"montage_cluster_{n:02d}.png" for n in range(5)]
    assert sorted(os.listdir(tmp_path / "run" / "plots")) == sorted(["map_pca.png", "pca_variance.png", *montages])

    # Embeddings changed since the run was clustered: one line, and the report is not rewritten.
    before = (tmp_path / "run" / "report.html").read_bytes()
    write_shards(shards, paths[:1000], vectors[:1000])
    with pytest.raises(UsageError, match="now hold 1,000 rows, not 1,797; run 'pixclust cluster-shards' again"):
        pixclust.build_report(tmp_path / "run", maps=["pca"], quiet=True)
    assert (tmp_path / "run" / "report.html").read_bytes() == before
    # Edits saved from the page, and added images, are for runs of 'pixclust cluster': one line each.
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps({"version": 1, "run": data["run"], "moves": []}), encoding="utf-8")
    with pytest.raises(UsageError, match="is a run of 'pixclust cluster-shards'; 'pixclust apply' works on runs of"):
        pixclust.apply(tmp_path / "run", edits)
    with pytest.raises(UsageError, match="is a run of 'pixclust cluster-shards'; 'pixclust add' works on runs of"):
        pixclust.add(tmp_path / "run", [tmp_path / "shards"])


def test_report_of_a_sharded_run_of_pixclust_embeddings_has_thumbnails(
    ray_instance: Any, digit_run: Path, tmp_path: Path
) -> None:
    pixclust.cluster_shards(digit_run, tmp_path / "run", k=3, pipeline="fixed", quiet=True)
    done = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--map", "pca", "-q"])
    assert done.exit_code == 0, done.output
    data = report_data(tmp_path / "run")
    assert len(data["points"]["path"]) == 180 and ["images", "180"] in data["summary"]
    assert len(data["thumbs"]) == 180 and min(data["points"]["thumb"]) >= 0


# Planted copies of digits: their cosine with the original is above this, and no two digits' (0.9956 at most).
PLANTED_COSINE = 0.999


def test_content_groups_are_the_rows_sharing_a_key() -> None:
    keys = np.array([7, 3, 7, 9, 3, 7, 1], dtype=np.int64)
    assert [group.tolist() for group in content_groups(keys)] == [[1, 4], [0, 2, 5]]
    assert content_groups(np.arange(5, dtype=np.int64)) == []


def test_duplicates_of_vectors_without_files_are_the_local_finders(
    ray_instance: Any,
    digit_pixels: tuple[list[str], np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths, digits, _ = digit_pixels
    rng = np.random.default_rng(0)
    originals = rng.choice(len(digits), 12, replace=False)
    scale = np.linalg.norm(digits[originals[6:]], axis=1, keepdims=True) / np.sqrt(digits.shape[1])
    near = digits[originals[6:]] + rng.normal(0, 0.015, (6, digits.shape[1])).astype(np.float32) * scale
    vectors = np.concatenate([digits, digits[originals[:6]], near]).astype(np.float32)
    cosines = np.sum(near * digits[originals[6:]], axis=1) / (
        np.linalg.norm(near, axis=1) * np.linalg.norm(digits[originals[6:]], axis=1)
    )
    assert (cosines > PLANTED_COSINE).all(), cosines
    all_paths = [*paths, *(f"copies/{copy:02d}.png" for copy in range(12))]
    shards = write_shards(tmp_path / "shards", all_paths, vectors)

    done = CliRunner().invoke(
        app,
        ["duplicates-shards", str(shards), "--out", str(tmp_path / "out"), "--threshold", str(PLANTED_COSINE), "-q"],
    )
    assert done.exit_code == 0, done.output
    assert "pairs not compared (no content hashes" in " ".join(done.output.split())

    with open(tmp_path / "out" / "duplicates.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    groups: dict[str, set[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], set()).add(from_cell(row["path"]))
    names = [pixclust_name(path) for path in all_paths]
    planted = {frozenset({names[int(row)], names[len(digits) + copy]}) for copy, row in enumerate(originals)}
    assert {frozenset(group) for group in groups.values()} == planted
    n = len(vectors)
    zeros = np.zeros(n, dtype=np.int64)
    without_files = Embeddings(names, vectors, [""] * n, zeros, zeros, np.zeros((n, 2), np.int64), "pixels")
    local = find_duplicates(without_files, threshold=PLANTED_COSINE)
    assert {frozenset(names[row] for row in group.rows) for group in local.groups} == planted
    # Copies of one vector are exact copies; the near ones near; each group keeps the image the local finder keeps.
    kinds = {from_cell(row["path"]): row["kind"] for row in rows}
    assert kinds == {
        names[row]: kind for group in local.groups for row, kind in zip(group.rows, group.kinds, strict=True)
    }
    assert sorted(kinds.values()) == ["exact"] * 6 + ["keeper"] * 12 + ["near"] * 6

    # Too many rows in candidate pairs to compare exactly in the driver: refused, in one line, before reading them.
    monkeypatch.setattr(sharded_duplicates, "EXACT_COSINE_BYTES", 12 * 64 * 4)
    with pytest.raises(UsageError, match=r"too many to compare exactly in this process.*raise --threshold") as raised:
        pixclust.duplicates_shards(shards, tmp_path / "out", threshold=PLANTED_COSINE, quiet=True)
    assert "\n" not in str(raised.value)


def test_duplicates_mistakes_are_refused_before_anything_is_written(
    pixel_shards: Path, digit_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cases = {
        "--keep 'biggest' is not a rule": {"keep": "biggest"},
        r"--threshold 1.5 must be in \(0, 1\]": {"threshold": 1.5},
        "neighbours=0 is not allowed": {"neighbours": 0},
    }
    for message, settings in cases.items():
        with pytest.raises(UsageError, match=message):
            pixclust.duplicates_shards(pixel_shards, out, **settings)
    assert not out.exists()
    before = sorted(os.listdir(digit_run))
    with pytest.raises(UsageError, match=r"holds a run of 'pixclust cluster' \(run.json\)"):
        pixclust.duplicates_shards(pixel_shards, digit_run)
    assert sorted(os.listdir(digit_run)) == before
    made = RunFolder.open(tmp_path / "made")
    with made.writing():
        shutil.copytree(pixel_shards, made.root / "vectors")
    with pytest.raises(UsageError, match="are inside the run folder"):
        pixclust.duplicates_shards(made.root / "vectors", made.root)


@pytest.mark.slow
def test_photo_duplicates_are_the_local_finders(ray_instance: Any, tmp_path: Path) -> None:
    """Real photos and their edits (bench/duplicates.py's) through the default model: the groups, kinds,
    keepers and evidence of duplicates.csv are the local finder's, compared on the files by Ray tasks."""
    tiles = ("hubble_deep_field-r1c1", "astronaut-r0c0", "coffee-r0c1")
    write_duplicate_set(tmp_path / "images", distractors=20, tiles=tiles)
    embeddings = embed(tmp_path / "images", out=tmp_path / "run", quiet=True)
    local = find_duplicates(embeddings)
    assert len(local.groups) == len(tiles)
    local_csv = write_duplicates_csv(tmp_path / "local.csv", embeddings, local)

    found = pixclust.duplicates_shards(tmp_path / "run", tmp_path / "sharded", quiet=True)

    assert found.verified_files and found.report.n_images == len(embeddings)
    assert found.report.verified == found.report.candidates >= local.candidates

    def without_cosine(path: Path) -> list[dict[str, str]]:
        # The sharded finder's cosine is estimated from its index's codes; the local one's is exact.
        with open(path, newline="", encoding="utf-8") as stream:
            return [
                {name: value for name, value in row.items() if name != "min_similarity"}
                for row in csv.DictReader(stream)
            ]

    assert without_cosine(found.csv_path) == without_cosine(local_csv)


@pytest.mark.slow
@pytest.mark.parametrize("data_set", ["digits", "fashion"])
def test_on_real_images_it_agrees_with_the_local_pipelines(
    ray_instance: Any, data_set: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The default command's run of the images (class = sub-folder), shared with tests/test_quality.py.
    local = request.getfixturevalue(f"{data_set}_default_run")
    embeddings = local.embeddings
    truth = np.array([Path(path).parent.name for path in embeddings.paths])
    store = local.run_dir / "embeddings.parquet"

    fixed = pixclust.cluster_shards(store, tmp_path / "fixed", k=10, pipeline="fixed", quiet=True)
    local_fixed = pixclust.cluster(embeddings, k=10, pipeline="fixed")
    assert fixed.summary["sample_rows"] == len(embeddings)
    assert adjusted_rand_score(local_fixed.labels, table_labels(tmp_path / "fixed")) >= 0.95

    # The default pipeline with the run's HOG vectors, as the default command clusters: given the run folder,
    # cluster-shards reads its embeddings.parquet (not its other Parquet files) and its views/hog/.
    default = pixclust.cluster_shards(local.run_dir, tmp_path / "auto", k=10, quiet=True)
    assert default.summary["inputs"] == [str(store)]
    assert default.summary["hog_inputs"] == [str(local.run_dir / "views" / "hog" / "embeddings.parquet")]
    assert default.summary["choice"]["representation"] == local.clustering.choice["representation"]
    assert adjusted_rand_score(local.clustering.labels, table_labels(tmp_path / "auto")) >= 0.95
    assert cluster_accuracy(truth, table_labels(tmp_path / "auto")) >= local.scores["acc"] - 0.02
