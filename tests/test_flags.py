"""Image-quality flags on real photos: pixel stats in the decode workers, judged against cluster and collection."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from real_data import photo

import pixclust
from pixclust.curation.flags import DEFAULT_FLAG_THRESHOLD, FLAG_NAMES, flag_images
from pixclust.embedding.pixel_stats import IMAGE_STATS, measure
from pixclust.errors import UsageError
from pixclust.runs.pipeline import RunConfig

STAT = {name: column for column, name in enumerate(IMAGE_STATS)}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def crops(name: str, count: int, *, side: int = 96, seed: int = 0) -> list[Image.Image]:
    """Square crops of a third to a half of a scikit-image photo's shorter side, anywhere in it."""
    pixels = photo(name)
    height, width = pixels.shape[:2]
    rng = np.random.default_rng([seed, PHOTOS.index(name) if name in PHOTOS else 99])
    images = []
    for _ in range(count):
        crop = int(min(height, width) * rng.uniform(0.33, 0.5))
        top, left = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
        picture = Image.fromarray(pixels[top : top + crop, left : left + crop])
        images.append(picture.resize((side, side), Image.Resampling.LANCZOS))
    return images


def darkened(image: Image.Image) -> Image.Image:
    return image.point(lambda value: round(value * 0.15))


def test_the_pixel_stats_read_blur_darkness_colour_and_blankness_off_real_photos() -> None:
    original = crops("astronaut", 1, side=256)[0]
    stats = measure(original)
    blurred = measure(original.filter(ImageFilter.GaussianBlur(3)))
    assert blurred[STAT["sharpness"]] < stats[STAT["sharpness"]] / 10
    assert measure(darkened(original))[STAT["luminance_high"]] < 0.16 < stats[STAT["luminance_high"]]
    assert measure(original.convert("L").convert("RGB"))[STAT["colourfulness"]] == 0 < stats[STAT["colourfulness"]]
    blank = measure(Image.new("RGB", (64, 64), (120, 90, 60)))
    assert blank[STAT["contrast"]] == 0 and blank[STAT["entropy"]] == 0
    # Measured at a comparable scale: the same picture four times larger is about as sharp.
    large = measure(original.resize((1024, 1024), Image.Resampling.LANCZOS))
    assert large[STAT["sharpness"]] == pytest.approx(stats[STAT["sharpness"]], rel=0.5)


def _collection() -> tuple[list[Image.Image], np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        picked = crops(name, 30)
        images += picked
        labels += [label] * len(picked)
    return images, np.array(labels)


def test_a_cluster_of_dark_photos_is_not_dark_but_a_dark_copy_among_bright_ones_is() -> None:
    images, labels = _collection()
    night = crops("hubble_deep_field", 30)  # a real photo of the night sky: dark, and rightly so
    copy = darkened(images[0])
    stats = np.array([measure(image) for image in [*images, *night, copy]])
    sizes = np.array([image.size for image in [*images, *night, copy]])
    flags = flag_images(stats, sizes, np.concatenate([labels, np.full(30, 4), [labels[0]]]))
    dark = np.array(["dark" in image for image in flags.flags])
    assert dark[-1]
    assert dark[len(images) : -1].mean() <= 0.1
    assert dark[: len(images)].sum() == 0


def test_flags_are_plain_data_and_a_higher_threshold_raises_fewer() -> None:
    images, labels = _collection()
    planted = [images[1].filter(ImageFilter.GaussianBlur(3)), darkened(images[40]), images[70].resize((16, 16))]
    all_images = [*images, *planted]
    stats = np.array([measure(image) for image in all_images])
    sizes = np.array([image.size for image in all_images])
    labels = np.concatenate([labels, labels[[1, 40, 70]]])
    flags = flag_images(stats, sizes, labels)
    assert flags.scores.shape == (len(all_images), len(FLAG_NAMES))
    assert flags.threshold == DEFAULT_FLAG_THRESHOLD
    assert set(flags.counts()) <= set(FLAG_NAMES) and flags.n_flagged == sum(map(bool, flags.flags))
    strict = flag_images(stats, sizes, labels, threshold=3 * DEFAULT_FLAG_THRESHOLD)
    assert strict.n_flagged < flags.n_flagged
    worst_first = np.argsort(-flags.severity)
    assert set(worst_first[: flags.n_flagged]) == {row for row, image in enumerate(flags.flags) if image}
    unmeasured = flag_images(np.full_like(stats, np.nan), np.zeros_like(sizes), labels)
    assert unmeasured.n_flagged == 0
    with pytest.raises(UsageError, match="threshold=0 must be a positive number"):
        flag_images(stats, sizes, labels, threshold=0)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """A folder of 120 real photo crops with four degraded copies planted, and its run folder."""
    root = tmp_path_factory.mktemp("planted")
    images, _ = _collection()
    for index, image in enumerate(images):
        image.save(root / f"{PHOTOS[index // 30]}_{index:03d}.png")
    planted = {
        "blurred.png": ("blurry", images[3].filter(ImageFilter.GaussianBlur(3))),
        "darkened.png": ("dark", darkened(images[35])),
        "blank.png": ("uniform", Image.new("RGB", (96, 96), (128, 128, 128))),
        "thumbnail.png": ("tiny", images[95].resize((16, 16), Image.Resampling.LANCZOS)),
    }
    for name, (_, image) in planted.items():
        image.save(root / name)
    run_dir = tmp_path_factory.mktemp("run")
    return root, {name: flag for name, (flag, _) in planted.items()}, run_dir


@pytest.mark.slow
def test_planted_degraded_photos_are_flagged_in_clusters_csv_the_terminal_and_the_report(
    planted_run: tuple[Path, dict[str, str], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixclust.cli import main

    root, expected, run_dir = planted_run
    monkeypatch.setattr(sys, "argv", ["pixclust", "cluster", str(root), "--out", str(run_dir), "--map", "pca"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert not exited.value.code
    out = capsys.readouterr().out
    with open(run_dir / "clusters.csv", newline="") as stream:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(stream)}
    for name, flag in expected.items():
        assert flag in rows[name]["flags"].split(";"), (name, rows[name]["flags"])
        assert float(rows[name]["flag_score"]) >= DEFAULT_FLAG_THRESHOLD
    clean = [row for name, row in rows.items() if name not in expected]
    assert sum(1 for row in clean if row["flags"]) <= 0.05 * len(clean)
    assert all(row["flag_score"] == "" for row in clean if not row["flags"])
    assert "quality flags:" in " ".join(out.split()) and "blurry" in out
    html = (run_dir / "report.html").read_text()
    assert 'id="flags-card"' in html and "darkened.png" in html


def test_a_flag_threshold_that_is_not_a_positive_number_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"flag_threshold='high' must be a positive number"):
        RunConfig(source=str(tmp_path), out=str(tmp_path / "run"), flag_threshold="high")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"--flag-threshold -1 must be a positive number"):
        RunConfig.from_dict(
            {"source": str(tmp_path), "out": str(tmp_path / "run"), "flag_threshold": -1},
            given={"flag_threshold"},
            from_cli=True,
        )


def test_precomputed_vectors_carry_no_pixel_stats_and_raise_no_flags(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    from pixclust.embedding.sources import load_precomputed

    embeddings = load_precomputed(tmp_path / "vectors.npy")
    assert np.isnan(embeddings.image_stats).all()
    labels = pixclust.cluster(embeddings, k=2).labels
    flags = flag_images(embeddings.image_stats, embeddings.image_sizes, labels)
    assert flags.n_flagged == 0


def test_a_run_from_before_pixel_stats_still_reports_and_adds_and_is_measured_at_its_next_clustering(
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq

    from pixclust.report import build_report
    from pixclust.runs.add import add
    from pixclust.runs.pipeline import run

    source, new = tmp_path / "photos", tmp_path / "new"
    source.mkdir()
    new.mkdir()
    for index, image in enumerate(crops("chelsea", 12) + crops("coffee", 12)):
        image.save(source / f"{index:02d}.png")
    Image.new("RGB", (96, 96), (100, 100, 100)).save(new / "blank.png")
    run_dir = tmp_path / "run"
    run(RunConfig(source=str(source), out=str(run_dir), model="pixels", k=2, report=False), quiet=True)
    # The run as an earlier pixclust left it: a version-1 store and clusters.csv without flags.
    store_file = run_dir / "embeddings.parquet"
    older = pq.read_table(store_file).drop_columns(list(IMAGE_STATS))
    pq.write_table(older.replace_schema_metadata({b"pixclust_store_version": b"1"}), store_file)
    with open(run_dir / "clusters.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    columns = [name for name in rows[0] if name not in ("flags", "flag_score")]
    with open(run_dir / "clusters.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    assert "No image is flagged" in build_report(run_dir, maps=["pca"], quiet=True).read_text()
    add(run_dir, [new], report=False, quiet=True)
    with open(run_dir / "clusters.csv", newline="") as stream:
        flags = {Path(row["path"]).name: row["flags"] for row in csv.DictReader(stream)}
    assert flags["blank.png"] == "uniform" and set(flags.values()) <= {"", "uniform"}

    again = pixclust.embed([source, new], model="pixels", out=run_dir, quiet=True)
    # The rows stored without stats are measured now; the added image's are reused.
    assert (again.n_extracted, again.n_reused) == (24, 1)
    assert np.isfinite(again.image_stats[:, STAT["luminance_mean"]]).all()


def test_infinite_or_missing_measures_never_print_an_infinite_score() -> None:
    """What a hand-edited store could hold: the flags stay words, the scores numbers a CSV can hold."""
    rng = np.random.default_rng(0)
    stats = rng.uniform(size=(40, len(IMAGE_STATS))).astype(np.float32)
    stats[0], stats[1], stats[2] = np.inf, -np.inf, np.nan
    sizes = np.tile([[100, 80]], (40, 1))
    sizes[3] = 0
    distances = rng.uniform(size=40)
    distances[4] = np.inf
    flags = flag_images(stats, sizes, np.repeat([0, 1], 20), distances)
    assert np.isfinite(flags.severity).all() and flags.severity.max() <= 1000
    assert all(score == "" or len(score) <= 8 for _, score in flags.cells())
    assert flags.flags[2] == () and "outlier" in flags.flags[4]


def test_a_hand_edited_flag_score_that_is_not_a_number_still_builds_the_report(
    planted_run: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    import shutil

    from pixclust.report import build_report

    root, _, run_dir = planted_run
    if not (run_dir / "clusters.csv").is_file():  # run on its own, without the test above
        pixclust.run(RunConfig(source=str(root), out=str(run_dir), maps=["pca"]), quiet=True)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    with open(copy / "clusters.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    flagged = next(row for row in rows if row["flags"])
    flagged["flag_score"], flagged["distance"] = "very bad", "far"
    with open(copy / "clusters.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    html = build_report(copy, maps=["pca"], quiet=True).read_text()
    assert Path(flagged["path"]).name in html
