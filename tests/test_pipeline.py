"""The public API end to end on real images with the real default model."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGIT_CLASSES, tree_digest

import pixclust
from pixclust.embedding import extraction
from pixclust.embedding.store import EMBEDDINGS_FILE, EmbeddingStore
from pixclust.embeddings import Embeddings
from pixclust.errors import NoImagesError, UsageError
from pixclust.runs.pipeline import RunConfig
from pixclust.runs.record import RUN_RECORD_VERSION, RunRecord


def test_embed_caches_by_content_and_model(tmp_path: Path, messy_tree) -> None:
    root, bad = messy_tree
    run_dir = tmp_path / "run"
    first = pixclust.embed(root, out=run_dir, quiet=True)
    assert len(first) == 45 and first.n_extracted == 45 and first.n_reused == 0
    assert {Path(s.path).name: s.reason for s in first.skipped} == bad

    second = pixclust.embed(root, out=run_dir, quiet=True)
    assert second.n_extracted == 0 and second.n_reused == 45
    np.testing.assert_array_equal(first.vectors, second.vectors)

    changed = Path(first.paths[0])
    changed.write_bytes(Path(first.paths[1]).read_bytes())
    third = pixclust.embed(root, out=run_dir, quiet=True)
    # The changed file now holds another file's bytes: its vector is that file's, with nothing to extract.
    assert third.n_extracted == 0
    np.testing.assert_array_equal(third.vectors[0], third.vectors[1])

    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(changed, format="PNG")
    fourth = pixclust.embed(root, out=run_dir, quiet=True)
    assert fourth.n_extracted == 1 and fourth.n_reused == 44


def test_a_rerun_with_nothing_new_reuses_the_store_without_rewriting_it(tmp_path: Path, messy_tree) -> None:
    root, _ = messy_tree
    run_dir = tmp_path / "run"
    first = pixclust.embed(root, model="pixels", out=run_dir, quiet=True)
    store_file = run_dir / EMBEDDINGS_FILE

    def identity() -> tuple[int, int]:
        status = store_file.stat()
        return status.st_ino, status.st_mtime_ns

    saved = identity()
    second = pixclust.embed(root, model="pixels", out=run_dir, quiet=True)
    assert identity() == saved
    assert second.vectors.dtype == np.float32 and second.vectors.flags.c_contiguous
    np.testing.assert_array_equal(first.vectors, second.vectors)

    # Same bytes, new mtime: nothing to extract, but the store must learn the new mtime so the next run skips hashing.
    touched = Path(first.paths[0])
    mtime_ns = touched.stat().st_mtime_ns + 10**9
    os.utime(touched, ns=(mtime_ns, mtime_ns))
    third = pixclust.embed(root, model="pixels", out=run_dir, quiet=True)
    assert third.n_extracted == 0 and identity() != saved
    known = EmbeddingStore(run_dir).known(third.model_id)
    assert known.hash_by_stat[(str(touched), touched.stat().st_size, mtime_ns)] == third.content_hashes[0]


def test_identical_files_are_embedded_once(tmp_path: Path, messy_tree) -> None:
    root, _ = messy_tree
    original = next((root / "1").rglob("*.png"))
    shutil.copy(original, root / "copy_of_one.png")
    result = pixclust.embed(root, out=tmp_path / "run", quiet=True)
    assert len(result) == 46 and (result.n_extracted, result.n_reused) == (45, 1)
    rows = {Path(p).name: i for i, p in enumerate(result.paths)}
    np.testing.assert_array_equal(result.vectors[rows["copy_of_one.png"]], result.vectors[rows[original.name]])


def test_interrupted_embedding_resumes_from_saved_shards(tmp_path: Path, messy_tree, monkeypatch) -> None:
    root, _ = messy_tree
    run_dir = tmp_path / "run"
    monkeypatch.setattr(extraction, "FLUSH_EVERY", 8)
    original_batches = extraction.Embedder.iter_batches

    def interrupted_after_two_batches(self, paths):
        for n, batch in enumerate(original_batches(self, paths)):
            if n == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(extraction.Embedder, "iter_batches", interrupted_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        pixclust.embed(root, out=run_dir, batch_size=8, quiet=True)
    assert len(EmbeddingStore(run_dir).known(pixclust.load_extractor().model_id).row_of_hash) == 16

    monkeypatch.setattr(extraction.Embedder, "iter_batches", original_batches)
    resumed = pixclust.embed(root, out=run_dir, batch_size=8, quiet=True)
    assert resumed.n_extracted == 45 - 16 and resumed.n_reused == 16
    fresh = pixclust.embed(root, quiet=True)
    assert fresh.paths == resumed.paths
    np.testing.assert_allclose(fresh.vectors, resumed.vectors, rtol=1e-5, atol=1e-5)


def test_cluster_separates_digit_classes(digit_tree: Path) -> None:
    embeddings = pixclust.embed(digit_tree, quiet=True)
    result = pixclust.cluster(embeddings, k=3, random_state=0)
    assert result.n_clusters == 3
    truth = [Path(p).parent.parent.name for p in embeddings.paths]
    scores = pixclust.clustering.metrics.clustering_scores(truth, result.labels)
    # Chance is 0.33; Lite0 on these 64x64 digits scores about 0.72.
    assert scores["acc"] > 0.6
    assert result.coords_2d.shape == (len(embeddings), 2)
    assert np.all(result.distances >= 0)

    again = pixclust.cluster(embeddings, k=3, random_state=0)
    np.testing.assert_array_equal(result.labels, again.labels)

    auto = pixclust.cluster(embeddings, k="auto", k_range=(2, 8))
    assert auto.k_scan is not None and list(auto.k_scan.ks) == list(range(2, 9))
    assert auto.n_clusters == auto.k_scan.chosen_k
    assert len(DIGIT_CLASSES) == 3


def test_cluster_pairs_the_hog_view_with_the_images_by_path(digit_tree: Path) -> None:
    embeddings = pixclust.embed(digit_tree, quiet=True)
    hog = pixclust.embed(digit_tree, model="hog", quiet=True)
    in_order = pixclust.cluster(embeddings, hog=hog, k=3, refine=False)
    # The same vectors in another order name the same images, so they must give the same clustering.
    reverse = slice(None, None, -1)
    shuffled = Embeddings.from_columns(hog.row_table().take(list(range(len(hog)))[reverse]), hog.vectors[reverse])
    np.testing.assert_array_equal(pixclust.cluster(embeddings, hog=shuffled, k=3, refine=False).labels, in_order.labels)
    assert in_order.choice is not None and "embedding+hog" in in_order.choice["candidates"]
    with pytest.warns(DeprecationWarning, match="pairs their rows"):
        as_array = pixclust.cluster(embeddings, hog=hog.vectors, k=3, refine=False)
    np.testing.assert_array_equal(as_array.labels, in_order.labels)
    with pytest.raises(UsageError, match="pass the embeddings as Embeddings"):
        pixclust.cluster(embeddings.vectors, hog=hog, k=3)


def test_run_writes_every_output_and_leaves_the_source_alone(tmp_path: Path, messy_tree) -> None:
    root, bad = messy_tree
    before = tree_digest(root)
    run_dir = tmp_path / "run"
    result = pixclust.run(RunConfig(source=str(root), out=str(run_dir), k=3, truth="folders"), quiet=True)
    assert tree_digest(root) == before

    for name in ("embeddings.parquet", "clusters.csv", "errors.csv", "run.json"):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "errors.csv", newline="") as stream:
        errors = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(stream)}
    assert errors == bad
    with open(run_dir / "clusters.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 45 and {row["cluster"] for row in rows} == {"cluster_00", "cluster_01", "cluster_02"}
    linked = sorted((run_dir / "clusters").rglob("*"))
    links = [p for p in linked if p.is_symlink()]
    assert len(links) == 45 and all(Path(os.readlink(p)).is_file() for p in links)

    record = json.loads((run_dir / "run.json").read_text())
    assert record["counts"] == {"images_used": 45, "files_skipped": 3, "extracted": 45, "reused": 0}
    assert record["model"]["weights_sha256"] and record["versions"]["torch"]
    assert record["clustering"]["n_clusters"] == 3 and record["scores"]["acc"] == pytest.approx(result.scores["acc"])
    assert result.n_scored == 45
    assert RunRecord.read(run_dir / "run.json").to_dict() == record and record["record_version"] == RUN_RECORD_VERSION


def test_run_refuses_an_out_folder_inside_the_images(messy_tree) -> None:
    root, _ = messy_tree
    with pytest.raises(UsageError, match="inside the image folder"):
        pixclust.run(RunConfig(source=str(root), out=str(root / "run")), quiet=True)


def test_run_without_usable_images_says_so_and_lists_why(tmp_path: Path) -> None:
    source = tmp_path / "junk"
    source.mkdir()
    (source / "a.jpg").write_bytes(b"")
    (source / "b.png").write_text("hello")
    with pytest.raises(NoImagesError, match="no usable images"):
        pixclust.run(RunConfig(source=str(source), out=str(tmp_path / "run")), quiet=True)
    assert len((tmp_path / "run" / "errors.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"k": "ten"}, "k='ten'"),
        ({"method": "dbscan"}, "method='dbscan'"),
        ({"reduce": "tsne"}, "reduce='tsne'"),
        ({"k_min": 5, "k_max": 3}, "k range"),
        ({"colour": "red"}, "unknown settings colour"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RunConfig.from_dict({"source": ".", "out": "run", **settings})
