"""Plots and report.html of a real run (real images, the real default model)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import plant_duplicates, write_digit_tree

import pixclust
from pixclust.clustering.maps import map_basis, map_coordinates
from pixclust.errors import UsageError
from pixclust.report import plots
from pixclust.report.build import build_report
from pixclust.runs.folder import DUPLICATES_FILE, MAPS_FILE
from pixclust.runs.pipeline import RunConfig


def report_data(run_dir: Path) -> dict[str, Any]:
    html = (run_dir / "report.html").read_text()
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clustered run of 90 digit images and 3 planted duplicates, k chosen automatically, report built."""
    base = tmp_path_factory.mktemp("report")
    root = write_digit_tree(base / "images", per_class=30)
    (root / "bad.jpg").write_bytes(b"")
    plant_duplicates(root)
    run_dir = base / "run"
    pixclust.run(RunConfig(source=str(root), out=str(run_dir), k_max=6), quiet=True)
    return run_dir


def _vertical_lines(figure) -> dict[str, float]:
    axis = figure.axes[0]
    return {line.get_label(): line.get_xdata()[0] for line in axis.get_lines() if len(set(line.get_xdata())) == 1}


def test_elbow_and_silhouette_plots_mark_the_choices() -> None:
    ks = [2, 3, 4, 5, 6]
    elbow = plots.elbow_figure(ks, [100, 40, 30, 25, 22], elbow_k=3, chosen_k=4)
    assert _vertical_lines(elbow) == {"elbow k = 3": 3, "chosen k = 4": 4}
    scan = plots.k_scan_figure(ks, [0.2, 0.3, 0.5, None, 0.1], 4, "silhouette")
    assert _vertical_lines(scan) == {"chosen k = 4": 4}
    curve = scan.axes[0].get_lines()[0]
    assert list(curve.get_xdata()) == ks and np.isnan(curve.get_ydata()[3])


def test_variance_plot_shows_explained_cumulative_and_the_95_percent_line() -> None:
    ratio = np.array([0.5, 0.3, 0.1, 0.06, 0.04])
    figure = plots.variance_figure(ratio)
    axis = figure.axes[0]
    assert "95% with 4 components" in axis.get_title()
    assert [bar.get_height() for bar in axis.patches] == pytest.approx(ratio)
    assert [line.get_ydata()[0] for line in axis.get_lines() if line.get_label() == "95%"] == [0.95]


def test_silhouette_samples_plot_has_one_band_per_cluster_and_the_mean() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    values = np.array([0.5, 0.4, np.nan, 0.2, 0.1, -0.1])
    figure = plots.silhouette_samples_figure(values, labels, {0: "cluster_00", 1: "cluster_01", 2: "cluster_02"})
    axis = figure.axes[0]
    assert len(axis.collections) == 3
    assert [t.get_text() for t in axis.texts] == ["cluster_00", "cluster_01", "cluster_02"]
    assert _vertical_lines(figure) == {"mean = 0.220": pytest.approx(0.22)}


def test_maps_fit_a_sample_and_place_the_rest() -> None:
    from sklearn.datasets import load_digits

    basis = map_basis(load_digits().data[:300])
    for method in ("tsne", "umap"):
        coords = map_coordinates(basis, method, fit_sample=120, random_state=0)
        assert coords.shape == (300, 2) and np.isfinite(coords).all()
        np.testing.assert_array_equal(coords, map_coordinates(basis, method, fit_sample=120, random_state=0))
    in_depth = map_coordinates(basis, "tsne", n_components=3, fit_sample=120)
    assert in_depth.shape == (300, 3) and np.isfinite(in_depth).all()
    # The report hands the 3-D map its cached 2-D map; the map is the one made without it.
    flat = map_coordinates(basis, "tsne", fit_sample=120)
    np.testing.assert_array_equal(
        in_depth, map_coordinates(basis, "tsne", n_components=3, fit_sample=120, flat_map=flat)
    )
    assert map_coordinates(basis, "pca", n_components=3).shape == (300, 3)
    assert map_coordinates(map_basis(basis[:2]), "tsne").shape == (2, 2)
    # Twenty copies of one picture: one spot, not NaN (openTSNE's) nor rounding errors spread out.
    copies = map_basis(np.repeat(load_digits().data[:1], 20, axis=0))
    for dims in (2, 3):
        np.testing.assert_allclose(map_coordinates(copies, "tsne", n_components=dims), 0.0, atol=1e-6)
    with pytest.raises(UsageError, match="--map 'mds'"):
        map_coordinates(basis, "mds")


@pytest.mark.parametrize("dims", [2, 3])
def test_tsne_maps_keep_classes_together(dims: int) -> None:
    from sklearn.datasets import load_digits
    from sklearn.neighbors import NearestNeighbors

    pixels, digits = load_digits(return_X_y=True)
    pixels, digits = pixels[:600], digits[:600]
    coords = map_coordinates(map_basis(pixels), "tsne", n_components=dims)
    nearest = NearestNeighbors(n_neighbors=11).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]
    # t-SNE's shortened optimisation still puts 96% of a digit's 10 nearest map neighbours in its class (PCA: 56-69%).
    assert (digits[nearest] == digits[:, None]).mean() > 0.9


def test_run_writes_every_plot_and_a_self_contained_report(report_run: Path) -> None:
    record = json.loads((report_run / "run.json").read_text())
    names = set(record["clustering"]["sizes"])
    expected = {"pca_variance", "elbow", "silhouette_k", "modularity_k", "silhouette_samples", "map_pca", "map_tsne"}
    expected |= {f"montage_{name}" for name in names}
    assert {p.stem for p in (report_run / "plots").glob("*.png")} == expected
    assert record["timings_s"]["report_s"] > 0

    html = (report_run / "report.html").read_text()
    assert len(html) < 8_000_000
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", html)
    data = report_data(report_run)
    assert [c["name"] for c in data["clusters"]] == sorted(names)
    assert sum(c["size"] for c in data["clusters"]) == 93
    assert all(uri.startswith("data:image/webp;base64,") for uri in data["thumbs"])
    assert min(data["points"]["thumb"]) >= 0
    assert set(data["maps"]) == {"pca", "tsne"} and len(data["maps"]["tsne"]["2d"][0]) == 93
    assert data["errors"][0][1] == "empty file"
    assert {"elbow", "silhouette_k", "pca_variance", "silhouette_samples"} <= set(data["plots"])


def test_report_shows_the_planted_duplicate_groups_with_the_largest_kept(report_run: Path) -> None:
    data = report_data(report_run)
    names = data["points"]["name"]
    groups = {group["kind"]: group for group in data["duplicates"]["groups"]}
    assert len(data["duplicates"]["groups"]) == 2
    original, copy = sorted(names[row] for row in groups["exact"]["rows"])
    assert copy == original.replace(".png", "_copy.png")
    assert groups["exact"]["similarity"] == 1.0
    near = groups["near"]
    assert {names[row] for row in near["rows"]} == {"photo.jpg", "photo-small.jpg"}
    assert names[near["keeper"]] == "photo.jpg" and near["rows"][0] == near["keeper"]
    assert near["sizes"] == [[640, 427], [480, 320]]
    assert 0.9 <= near["similarity"] < 1.0
    assert data["duplicates"]["headline"].startswith("2 groups, 2 redundant images")
    assert ["duplicate groups", "2 (2 redundant images)"] in data["summary"]
    features = dict(data["summary"])["features chosen"]
    assert re.fullmatch(
        r"(embedding|embedding\+hog) \(stability: embedding \d\.\d\d, embedding\+hog -?\d\.\d\d\)", features
    )
    choice = json.loads((report_run / "run.json").read_text())["clustering"]["pipeline"]
    moved = f"{choice['refined_share']:.1%} of images moved"
    if choice["voted_share"] is not None:
        moved += f", {choice['voted_share']:.1%} by their neighbours' vote"
    if choice["view_agreement"] is not None:
        moved += f"; views' agreement {choice['view_agreement']:.2f}"
    assert dict(data["summary"])["refined on"] == f"{choice['refined_on']} ({moved})"


def test_galleries_put_the_most_typical_first(report_run: Path) -> None:
    from pixclust.report.run_view import load_run

    view = load_run(report_run)
    for label in view.names:
        distances = view.distances[view.members(label)]
        assert np.all(np.diff(distances) >= 0)


def test_rebuilding_reuses_maps_thumbnails_and_duplicates(report_run: Path) -> None:
    caches = (MAPS_FILE, "thumbnails.parquet", DUPLICATES_FILE)
    stamps = {name: (report_run / name).stat().st_mtime_ns for name in caches}
    found = report_data(report_run)["duplicates"]
    build_report(report_run, maps=["pca", "tsne"], quiet=True)
    assert {name: (report_run / name).stat().st_mtime_ns for name in stamps} == stamps
    assert report_data(report_run)["duplicates"] == found
    build_report(report_run, maps=["umap"], quiet=True)
    assert (report_run / "plots" / "map_umap.png").is_file()
    assert not (report_run / "plots" / "map_tsne.png").exists()
    assert '"umap"' in (report_run / "report.html").read_text()


def test_no_report_writes_only_the_tables_and_a_later_report_finds_no_duplicates(tmp_path: Path) -> None:
    root = write_digit_tree(tmp_path / "images", per_class=4)
    run_dir = tmp_path / "run"
    pixclust.run(RunConfig(source=str(root), out=str(run_dir), k=2, report=False), quiet=True)
    assert not (run_dir / "report.html").exists() and not (run_dir / "plots").exists()
    assert (run_dir / "clusters.csv").is_file()
    build_report(run_dir, maps=["pca"], quiet=True)
    duplicates = report_data(run_dir)["duplicates"]
    assert duplicates["groups"] == [] and re.fullmatch(
        r"No duplicates found \(\d+ look-alike pairs compared on their files\)\.", duplicates["headline"]
    )
    assert ["duplicate groups", "0 (0 redundant images)"] in report_data(run_dir)["summary"]


def test_a_run_hands_its_embeddings_to_the_report_instead_of_reading_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixclust.embedding.store import EmbeddingStore

    def no_second_copy(self: EmbeddingStore) -> None:
        raise AssertionError("the report read embeddings.parquet again")

    root = write_digit_tree(tmp_path / "images", per_class=4)
    monkeypatch.setattr(EmbeddingStore, "load", no_second_copy)
    pixclust.run(RunConfig(source=str(root), out=str(tmp_path / "run"), k=2, maps=("pca",)), quiet=True)
    assert len(report_data(tmp_path / "run")["points"]["path"]) == 12


def test_report_on_a_folder_that_is_no_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a pixclust run folder"):
        build_report(tmp_path)


def test_drawing_the_figures_leaves_the_users_matplotlib_backend_alone(tmp_path: Path) -> None:
    # A notebook's inline backend must survive pixclust: the figures are drawn without pyplot.
    code = (
        "import matplotlib, numpy as np\n"
        "from pixclust.report import plots\n"
        "from pixclust.report.figures import write_roc_plot\n"
        "plots.save_png(plots.variance_figure(np.array([0.6, 0.4])))\n"
        f"write_roc_plot({str(tmp_path / 'roc.png')!r}, {{'a': ([0, 1], [0, 1])}}, {{'a': 0.5}})\n"
        "print(matplotlib.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg" and (tmp_path / "roc.png").stat().st_size > 0
