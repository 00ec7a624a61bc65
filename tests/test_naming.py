"""Cluster names from the network's own ImageNet classifier, on real photos."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_flags import crops

from pixclust.curation.naming import UNNAMED, name_clusters
from pixclust.embedding.class_head import class_head
from pixclust.embedding.extractor import FeatureExtractor
from pixclust.runs.pipeline import RunConfig, run

# The ImageNet classes a person accepts for each photo's crops.
ACCEPTED = {
    "chelsea": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "lynx", "tiger"},
    "coffee": {"espresso", "cup", "coffee mug", "eggnog", "consomme"},
}


def test_the_default_network_brings_its_imagenet_classifier_and_class_names(
    default_extractor: FeatureExtractor,
) -> None:
    head = class_head(default_extractor.record)
    assert head is not None and head.weight.shape == (1000, default_extractor.dim)
    assert head.class_names[281] == "tabby" and head.class_names[967] == "espresso"
    picture = crops("chelsea", 1, side=256)[0]
    vector = default_extractor.embed_batch(np.stack([default_extractor.transform(picture)]))
    (probabilities,) = head.probabilities(vector)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert head.class_names[int(probabilities.argmax())] in ACCEPTED["chelsea"]


def test_a_cluster_is_named_by_what_is_common_in_it_and_rare_elsewhere(default_extractor: FeatureExtractor) -> None:
    head = class_head(default_extractor.record)
    assert head is not None
    images = crops("chelsea", 12) + crops("coffee", 12) + crops("rocket", 12)
    vectors = default_extractor.embed_batch(np.stack([default_extractor.transform(image) for image in images]))
    labels = np.repeat([0, 1, 2], 12)
    names = name_clusters(head, vectors, labels)
    assert set(names) == {0, 1, 2}
    assert set(names[0].classes) & ACCEPTED["chelsea"] and set(names[1].classes) & ACCEPTED["coffee"]
    assert all(name.confidence >= 1 / 3 for name in names.values() if name.name != UNNAMED)
    # One label for everything: nothing is rarer elsewhere, and noise (-1) is never named.
    assert name_clusters(head, vectors, np.full(36, -1)) == {}


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("named")
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        (root / name).mkdir()
        for index, image in enumerate(crops(name, 15)):
            image.save(root / name / f"{index:02d}.png")
    return root


@pytest.mark.slow
def test_names_reach_clusters_csv_the_terminal_the_report_and_the_folders(
    named_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixclust.cli import main

    run_dir = tmp_path / "run"
    command = ["pixclust", "cluster", str(named_run), "--out", str(run_dir), "--k", "4", "--name-folders"]
    monkeypatch.setattr(sys, "argv", [*command, "--map", "pca"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert not exited.value.code
    out = " ".join(capsys.readouterr().out.split())
    with open(run_dir / "clusters.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    cat_rows = [row for row in rows if Path(row["path"]).parent.name == "chelsea"]
    cat_cluster = max({row["cluster"] for row in cat_rows}, key=[row["cluster"] for row in cat_rows].count)
    (cat_name,) = {row["name"] for row in rows if row["cluster"] == cat_cluster}
    assert set(cat_name.split(" / ")) & ACCEPTED["chelsea"], cat_name
    # The folder is named by its number and what it shows, and clusters.csv's cluster is that folder.
    cat_id = next(int(row["cluster_id"]) for row in cat_rows if row["cluster"] == cat_cluster)
    assert cat_cluster.startswith(f"{cat_id:02d}_") and cat_name.split(" / ")[0].replace(" ", "-") in cat_cluster
    assert (run_dir / "clusters" / cat_cluster).is_dir()
    assert cat_name.split(" / ")[0] in out
    html = (run_dir / "report.html").read_text()
    assert cat_cluster in html


def test_a_model_without_a_classifier_names_nothing_and_says_so(
    named_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(
        RunConfig(
            source=str(named_run), out=str(tmp_path / "run"), model="pixels", k=4, name_folders=True, report=False
        ),
        quiet=True,
    )
    assert result.names is None
    assert any("no ImageNet classifier" in record.getMessage() for record in caplog.records)
    folders = sorted(path.name for path in (tmp_path / "run" / "clusters").iterdir())
    assert folders == ["cluster_00", "cluster_01", "cluster_02", "cluster_03"]
    with open(tmp_path / "run" / "clusters.csv", newline="") as stream:
        assert {row["name"] for row in csv.DictReader(stream)} == {""}


def _not_a_zip(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 not a zip")


def _another_shape(path: Path) -> None:
    with open(path, "wb") as stream:
        np.savez(
            stream,
            weight=np.ones((1000, 7), np.float32),
            bias=np.ones(1000, np.float32),
            class_names=np.array(["x"] * 1000),
        )


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damage", [_not_a_zip, _another_shape, _cut_short])
def test_a_damaged_cached_head_is_read_again_from_the_weights(
    default_extractor: FeatureExtractor, damage: Callable[[Path], None]
) -> None:
    from pixclust.embedding.runtimes import cache_dir

    head = class_head(default_extractor.record)
    assert head is not None
    (cached,) = (cache_dir() / "heads").glob(f"{default_extractor.record.model}-*.npz")
    damage(cached)
    again = class_head(default_extractor.record)
    assert again is not None and again.class_names == head.class_names
    np.testing.assert_array_equal(again.weight, head.weight)
