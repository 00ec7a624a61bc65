from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from pixclust.clustering.clusterer import ClusterResult
from pixclust.clustering.reduce import Reduction
from pixclust.curation.export import (
    cluster_names,
    cluster_summary,
    export_cluster_folders,
    safe_file_name,
    write_clusters_csv,
    write_errors_csv,
)
from pixclust.embedding.files import SkippedFile
from pixclust.runs.folder import RunFolder


def test_cluster_names_sort_as_folders_and_name_noise() -> None:
    assert cluster_names(np.array([0, 1, -1])) == {-1: "noise", 0: "cluster_00", 1: "cluster_01"}
    assert cluster_names(np.arange(120))[7] == "cluster_007"


def test_duplication_is_the_share_redundant_with_one_image_kept_per_cluster() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2])
    rows = cluster_summary(labels)
    assert [(r.name, r.images) for r in rows] == [("cluster_00", 6), ("cluster_01", 3), ("cluster_02", 1)]
    assert [r.duplication for r in rows] == pytest.approx([0.5, 0.2, 0.0])
    assert sum(r.duplication for r in rows) == pytest.approx((10 - 3) / 10)
    assert sum(r.share for r in rows) == pytest.approx(1.0)


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "a/b", "..", "line\nbreak.jpg", "", "/abs"])
def test_safe_file_name_stays_one_entry(hostile: str) -> None:
    name = safe_file_name(hostile)
    assert name and "/" not in name and "\n" not in name and name not in (".", "..")


def _sources(root: Path) -> list[str]:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    paths = [root / "a" / "same.jpg", root / "b" / "same.jpg", root / "a" / "other.png"]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 10)
    return [str(p) for p in paths]


def test_cluster_folders_link_originals_and_resolve_name_clashes(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    with RunFolder.open(tmp_path / "run").writing() as run_folder:
        folder = export_cluster_folders(run_folder, sources, np.array([0, 0, 1]))
    entries = sorted(p.name for p in (folder / "cluster_00").iterdir())
    assert entries == ["same.jpg", "same~2.jpg"]
    link = folder / "cluster_00" / "same.jpg"
    assert link.is_symlink() and os.readlink(link) == sources[0]
    assert (folder / "cluster_01" / "other.png").read_bytes() == Path(sources[2]).read_bytes()


def test_re_export_replaces_the_previous_folders_and_copy_copies(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    run_dir = tmp_path / "run"
    with RunFolder.open(run_dir).writing() as run_folder:
        export_cluster_folders(run_folder, sources, np.array([0, 1, 2]))
        folder = export_cluster_folders(run_folder, sources, np.array([0, 0, 0]), copy=True)
    assert sorted(p.name for p in folder.iterdir()) == ["cluster_00"]
    copied = folder / "cluster_00" / "other.png"
    assert not copied.is_symlink() and copied.read_bytes() == Path(sources[2]).read_bytes()
    # Nothing of the staging folders or the retired clusters/ is left.
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".pixclust")) == ["clusters"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".pixclust-staging")]


def test_tables_are_plain_csv(tmp_path: Path) -> None:
    clustering = ClusterResult(
        labels=np.array([0, -1]),
        n_clusters=1,
        distances=np.array([0.5, np.nan]),
        silhouettes=np.array([0.25, np.nan]),
        coords_2d=np.zeros((2, 2)),
        reduction=Reduction(np.zeros((2, 2)), "pca", np.ones(2)),
        k_scan=None,
        silhouette=float("nan"),
        method="hdbscan",
    )
    flags = [("blurry;dark", "5.25"), ("", "")]
    write_clusters_csv(tmp_path / "clusters.csv", ["/p/a,b.jpg", "/p/c.jpg"], clustering, flags)
    rows = list(csv.DictReader((tmp_path / "clusters.csv").read_text().splitlines()))
    assert [(row["flags"], row["flag_score"]) for row in rows] == flags
    assert rows[0]["path"] == "/p/a,b.jpg" and rows[0]["cluster"] == "cluster_00" and rows[0]["distance"] == "0.500000"
    assert rows[0]["silhouette"] == "0.250000"
    assert rows[1]["cluster"] == "noise" and rows[1]["distance"] == "" and rows[1]["silhouette"] == ""
    write_errors_csv(tmp_path / "errors.csv", [SkippedFile("/p/x.png", "not an image", "content looks like text")])
    assert list(csv.reader((tmp_path / "errors.csv").read_text().splitlines())) == [
        ["path", "reason", "detail"],
        ["/p/x.png", "not an image", "content looks like text"],
    ]
