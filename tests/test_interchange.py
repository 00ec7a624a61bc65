"""`pixclust export`: a real run's clusters, names, flags and duplicates, read back by what each format's users read it with."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from command_line import pixclust
from conftest import plant_duplicates

from pixclust.curation.interchange import (
    COCO_JSON,
    EXPORT_CSV,
    FIFTYONE_DATA,
    FIFTYONE_EXTRA,
    FIFTYONE_LABELS,
    export_run,
    exported_images,
    read_export_csv,
)
from pixclust.errors import UsageError
from pixclust.report.caches import cached_duplicates
from pixclust.report.run_view import load_run


@pytest.fixture(scope="module")
def reported_run(digit_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 180 digits with an exact and a near copy planted, clustered with its report (so duplicate groups are cached)."""
    images = tmp_path_factory.mktemp("export") / "images"
    shutil.copytree(digit_tree, images)
    plant_duplicates(images)
    run_dir = images.parent / "run"
    # The PCA map alone: the exports hold no map, and a t-SNE would be most of this setup.
    done = pixclust("cluster", images, "--out", run_dir, "--map", "pca")
    assert done.returncode == 0, done.stderr
    return run_dir


def _expected(run_dir: Path):
    view = load_run(run_dir)
    return exported_images(view, cached_duplicates(view.run_dir, view.record.model_id, view.embeddings))


@pytest.mark.slow
def test_csv_export_reads_back_as_written(reported_run: Path, tmp_path: Path) -> None:
    done = pixclust("export", reported_run, "--format", "csv", "--out", tmp_path / "csv")
    assert done.returncode == 0, done.stderr
    assert "duplicate groups" in done.stdout
    back = read_export_csv(tmp_path / "csv" / EXPORT_CSV)
    expected = _expected(reported_run)
    assert len(back) == len(expected) == 183
    for ours, theirs in zip(back, expected, strict=True):
        assert (ours.path, ours.cluster, ours.name, ours.flags) == (
            theirs.path,
            theirs.cluster,
            theirs.name,
            theirs.flags,
        )
        assert (ours.duplicate_group, ours.duplicate_kind) == (theirs.duplicate_group, theirs.duplicate_kind)
        assert (math.isnan(ours.flag_score) and math.isnan(theirs.flag_score)) or abs(
            ours.flag_score - theirs.flag_score
        ) < 1e-3
    by_name = {Path(image.path).name: image for image in back}
    copy = next(name for name in by_name if name.endswith("_copy.png"))
    original = copy.replace("_copy", "")
    assert by_name[copy].duplicate_group == by_name[original].duplicate_group is not None
    assert {by_name[copy].duplicate_kind, by_name[original].duplicate_kind} == {"keeper", "exact"}
    assert by_name["photo.jpg"].duplicate_group == by_name["photo-small.jpg"].duplicate_group is not None


@pytest.mark.slow
def test_coco_export_loads_in_pycocotools(reported_run: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    import pixclust

    assert pixclust.export_run is export_run
    result = export_run(reported_run, format="coco", out=tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / COCO_JSON))
    expected = _expected(reported_run)
    clusters = sorted({image.cluster for image in expected})
    assert sorted(category["name"] for category in coco.loadCats(coco.getCatIds())) == clusters
    assert len(coco.getImgIds()) == result.n_images == len(expected)
    for image_id in coco.getImgIds():
        entry = coco.loadImgs(image_id)[0]
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        truth = expected[image_id - 1]
        assert entry["file_name"] == truth.path and Path(entry["file_name"]).is_file()
        assert coco.loadCats(annotation["category_id"])[0]["name"] == truth.cluster
        assert annotation["attributes"]["flags"] == list(truth.flags)
    digit = next(image_id for image_id in coco.getImgIds() if coco.loadImgs(image_id)[0]["file_name"].endswith(".png"))
    assert (coco.loadImgs(digit)[0]["width"], coco.loadImgs(digit)[0]["height"]) == (64, 64)


@pytest.mark.slow
def test_fiftyone_export_follows_its_documented_layout(reported_run: Path, tmp_path: Path) -> None:
    """FiftyOneImageClassificationDataset: labels.json {"classes": [...], "labels": {uuid: index}}, media by a data.json manifest."""
    export_run(reported_run, format="fiftyone", out=tmp_path / "fo")
    labels = json.loads((tmp_path / "fo" / FIFTYONE_LABELS).read_text())
    data = json.loads((tmp_path / "fo" / FIFTYONE_DATA).read_text())
    extra = json.loads((tmp_path / "fo" / FIFTYONE_EXTRA).read_text())
    expected = _expected(reported_run)
    assert set(labels) == {"classes", "labels"} and isinstance(labels["classes"], list)
    assert set(labels["labels"]) == set(data) == set(extra) and len(data) == len(expected)
    assert not (tmp_path / "fo" / "data").exists()
    by_path = {image.path: image for image in expected}
    for uuid, index in labels["labels"].items():
        image = by_path[data[uuid]]
        assert Path(data[uuid]).is_absolute() and Path(data[uuid]).is_file()
        assert labels["classes"][index] == image.cluster
        assert extra[uuid]["flags"] == list(image.flags) and extra[uuid]["duplicate_group"] == image.duplicate_group


@pytest.mark.slow
def test_export_refuses_what_it_cannot_do(reported_run: Path, digit_run: Path, tmp_path: Path) -> None:
    unknown = pixclust("export", reported_run, "--format", "yolo", "--out", tmp_path / "x")
    assert unknown.returncode == 2 and "yolo" in unknown.stderr and "Traceback" not in unknown.stderr
    into_run = pixclust("export", reported_run, "--format", "csv", "--out", reported_run)
    assert into_run.returncode == 2 and "run folder" in into_run.stderr
    assert not (reported_run / EXPORT_CSV).exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "labels.json").write_text("their own labels")
    (theirs / "notes.txt").write_text("keep me")
    refused = pixclust("export", reported_run, "--format", "fiftyone", "--out", theirs)
    assert refused.returncode == 2 and "notes.txt" in refused.stderr
    assert (theirs / "labels.json").read_text() == "their own labels"
    with pytest.raises(UsageError, match=r"clusters\.csv"):
        export_run(digit_run, format="csv", out=tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_export_replaces_only_its_own_unchanged_files(reported_run: Path, tmp_path: Path) -> None:
    """A name is no proof: a FiftyOne dataset's own labels.json, or an export edited by hand, is refused."""
    theirs = tmp_path / "dataset"
    theirs.mkdir()
    (theirs / FIFTYONE_LABELS).write_text('{"their": "own labels"}')
    with pytest.raises(UsageError, match=rf"{FIFTYONE_LABELS} is not a file pixclust export wrote"):
        export_run(reported_run, format="fiftyone", out=theirs)
    assert os.listdir(theirs) == [FIFTYONE_LABELS]
    assert (theirs / FIFTYONE_LABELS).read_text() == '{"their": "own labels"}'

    ours = tmp_path / "export"
    first = export_run(reported_run, format="csv", out=ours)
    assert export_run(reported_run, format="csv", out=ours).files == first.files
    with open(ours / EXPORT_CSV, "a", encoding="utf-8") as stream:
        stream.write("a row typed by hand\n")
    edited = (ours / EXPORT_CSV).read_bytes()
    refused = pixclust("export", reported_run, "--format", "csv", "--out", ours)
    assert refused.returncode == 2 and "changed since" in refused.stderr and "Traceback" not in refused.stderr
    assert (ours / EXPORT_CSV).read_bytes() == edited


@pytest.mark.slow
def test_export_names_files_whose_names_are_not_utf8(digit_tree: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for number, source in enumerate(sorted(digit_tree.rglob("*.png"))[:8]):
        name = os.fsdecode(b"\xff\xfe-%d.png" % number) if number % 2 else f"=cmd{number}.png"
        shutil.copy(source, images / name)
    assert pixclust("cluster", images, "--out", tmp_path / "run", "--no-report").returncode == 0
    export_run(tmp_path / "run", format="fiftyone", out=tmp_path / "fo")
    data = json.loads((tmp_path / "fo" / FIFTYONE_DATA).read_text())
    assert len(data) == 8 and all(Path(path).is_file() for path in data.values())
    export_run(tmp_path / "run", format="csv", out=tmp_path / "csv")
    assert sorted(image.path for image in read_export_csv(tmp_path / "csv" / EXPORT_CSV)) == sorted(data.values())
