"""Look-alikes and duplicates: real images through the real default model, and faiss on planted vectors."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixclust import index as index_module
from pixclust.curation.duplicates import DuplicateReport, find_duplicates
from pixclust.curation.lookalikes import find_duplicate_images, find_similar
from pixclust.curation.search import rows_of, similar
from pixclust.embedding.record import ModelRecord, WeightsSource
from pixclust.embedding.sources import extractor_for, load_precomputed, open_embeddings
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.index import VectorIndex
from pixclust.runs.pipeline import embed
from pixclust.runs.record import RunRecord


def _square(colour: str, side: int = 320) -> Image.Image:
    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([side // 4, side // 4, 3 * side // 4, 3 * side // 4], fill=colour)
    draw.ellipse([side // 10, side // 10, 3 * side // 10, 3 * side // 10], fill="black")
    return image


@pytest.fixture(scope="module")
def look_alikes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Embeddings]:
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("lookalikes")
    _square("red").save(root / "red.png")
    _square("blue").save(root / "blue.png")
    _square("red").resize((120, 120), Image.Resampling.BICUBIC).save(root / "red_small.png")
    _square("red").save(root / "red_recoded.jpg", quality=60)
    photo = Image.fromarray(load_sample_image("china.jpg"))
    photo.save(root / "photo.jpg", quality=90)
    photo.resize((320, 214), Image.Resampling.BILINEAR).save(root / "photo_small.jpg", quality=70)
    shutil.copyfile(root / "photo.jpg", root / "photo_copy.jpg")
    Image.fromarray(load_sample_image("flower.jpg")).save(root / "flower.jpg")
    run_dir = tmp_path_factory.mktemp("lookalikes_run")
    embeddings = embed(root, out=run_dir, quiet=True)
    RunRecord(model=embeddings.model.to_dict()).write(run_dir / "run.json")
    return run_dir, embeddings


def _group_of(report: DuplicateReport, embeddings: Embeddings, name: str) -> set[str]:
    for group in report.groups:
        names = {Path(embeddings.paths[row]).name for row in group.rows}
        if name in names:
            return names
    return {name}


def test_colour_matters_but_resizing_and_reencoding_do_not(look_alikes: tuple[Path, Embeddings]) -> None:
    _, embeddings = look_alikes
    # The embedding alone puts the red and the blue square at cosine about 0.87: both are candidates.
    for threshold in (0.8, None):
        report = find_duplicates(embeddings, threshold=threshold)
        assert _group_of(report, embeddings, "red.png") == {"red.png", "red_small.png", "red_recoded.jpg"}
        assert _group_of(report, embeddings, "blue.png") == {"blue.png"}
        assert _group_of(report, embeddings, "flower.jpg") == {"flower.jpg"}
    assert report.recoloured >= 2
    assert report.verified == report.candidates > 0
    blind = find_duplicates(embeddings, colour=False)
    assert "blue.png" in _group_of(blind, embeddings, "red.png")


def test_groups_keep_the_largest_image_and_tell_exact_from_near(look_alikes: tuple[Path, Embeddings]) -> None:
    _, embeddings = look_alikes
    report = find_duplicates(embeddings)
    photos = next(g for g in report.groups if "photo_small.jpg" in {Path(embeddings.paths[r]).name for r in g.rows})
    assert len(photos.rows) == 3 and photos.kind == "near"
    assert Path(embeddings.paths[photos.keeper]).name in {"photo.jpg", "photo_copy.jpg"}
    assert {kind for row, kind in zip(photos.rows, photos.kinds, strict=True) if row != photos.keeper} <= {
        "exact",
        "near",
    }
    assert photos.kinds[photos.rows.index(photos.keeper)] == "keeper"
    red = next(g for g in report.groups if "red.png" in {Path(embeddings.paths[r]).name for r in g.rows})
    assert Path(embeddings.paths[red.keeper]).name in {"red.png", "red_recoded.jpg"}
    assert 0.6 <= red.min_similarity < 1.0
    assert all(
        evidence.startswith(("structure", "same content", "keeper")) or "keypoints" in evidence
        for evidence in red.evidence
    )
    assert report.n_redundant == 4
    exact_only = find_duplicates(embeddings, threshold=1.0, verify_files=False)
    assert [sorted(Path(embeddings.paths[r]).name for r in g.rows) for g in exact_only.groups] == [
        ["photo.jpg", "photo_copy.jpg"]
    ]
    assert exact_only.groups[0].kind == "exact"


def test_similar_ranks_copies_first_and_leaves_the_query_out(look_alikes: tuple[Path, Embeddings]) -> None:
    _, embeddings = look_alikes
    row = rows_of(embeddings, ["red.png"])[0]
    assert row is not None
    (answer,) = similar(embeddings, embeddings.vectors[[row]], query_names=["red.png"], top=3, exclude_rows=[row])
    names = [Path(match.path).name for match in answer]
    assert row not in [match.row for match in answer]
    assert set(names[:2]) == {"red_small.png", "red_recoded.jpg"}
    assert [match.rank for match in answer] == [1, 2, 3]
    assert answer[0].similarity >= answer[-1].similarity
    # A cut between the copies and the next image (the blue square of the same shape) keeps only the copies.
    cut = (answer[1].similarity + answer[2].similarity) / 2
    assert answer[1].similarity > answer[2].similarity
    (strict,) = similar(embeddings, embeddings.vectors[[row]], top=10, min_similarity=cut, exclude_rows=[row])
    assert {Path(match.path).name for match in strict} == {"red_small.png", "red_recoded.jpg"}
    with pytest.raises(UsageError, match="--top"):
        similar(embeddings, embeddings.vectors[[row]], top=0)
    # The public API takes the Embeddings themselves, as pixclust.cluster does, as well as a run folder.
    (held,) = find_similar(embeddings, ["red.png"], top=3).answers
    assert [match.path for match in held] == [match.path for match in answer]


def test_inverted_index_finds_planted_pairs_like_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    copies = base[:40] + 0.05 * rng.normal(size=(40, 64)).astype(np.float32)
    vectors = np.vstack([base, copies])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    gram = unit @ unit.T
    truth = {(i, j) for i, j in zip(*np.nonzero(np.triu(gram, 1) >= 0.95), strict=True)}
    assert len(truth) == 40
    index = VectorIndex(vectors, exact_limit=1000, nprobe=8)
    assert not index.exact
    found = {
        (int(i), int(j))
        for left, right, _ in index.pairs_above(0.95, chunk=500)
        for i, j in zip(left, right, strict=True)
    }
    assert len(found & truth) >= 38 and found <= truth
    sims, ids = index.search(copies[:5], 2)
    assert [set(row) for row in ids.tolist()] == [{q, 3000 + q} for q in range(5)]
    assert (sims >= 0.95).all()


@pytest.mark.parametrize("exact_limit", [1000, 100])
def test_an_index_filled_in_chunks_answers_as_one_filled_at_once(
    exact_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    whole = VectorIndex(vectors, exact_limit=exact_limit).search(vectors[:20], 5)
    monkeypatch.setattr(index_module, "ADD_CHUNK", 7)
    chunked = VectorIndex(vectors, exact_limit=exact_limit).search(vectors[:20], 5)
    for expected, got in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(expected, got)


def test_precomputed_embeddings_with_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    vectors[7] = vectors[3]
    np.save(tmp_path / "embeddings.npy", vectors)
    (tmp_path / "ids.csv").write_text("id\n" + "".join(f"img_{i}\n" for i in range(50)))
    embeddings = open_embeddings(tmp_path / "embeddings.npy", ids=tmp_path / "ids.csv")
    assert embeddings.paths[7] == "img_7" and embeddings.dim == 16
    report = find_duplicates(embeddings, threshold=0.99)
    assert [(g.rows, g.kind) for g in report.groups] == [((3, 7), "exact")]
    assert report.verified == 0
    assert load_precomputed(tmp_path / "embeddings.npy").paths[:2] == ["0", "1"]
    (tmp_path / "short.csv").write_text("a\nb\n")
    with pytest.raises(UsageError, match="one id per row"):
        load_precomputed(tmp_path / "embeddings.npy", ids=tmp_path / "short.csv")
    with pytest.raises(UsageError, match="not a pixclust run folder"):
        open_embeddings(tmp_path / "ids.csv")


def test_run_folder_api_writes_tables_links_and_sheets(look_alikes: tuple[Path, Embeddings], tmp_path: Path) -> None:
    run_dir, _ = look_alikes
    result = find_duplicate_images(run_dir, out=tmp_path / "dupes", export=True)
    lines = (tmp_path / "dupes" / "duplicates.csv").read_text().splitlines()
    assert lines[0].startswith("group,kind,path,keep") and len(lines) == 1 + 6
    assert sum(line.split(",")[3] == "yes" for line in lines[1:]) == len(result.report.groups) == 2
    assert result.links is not None and len(list(result.links.glob("cluster_*/*"))) == 6
    query = tmp_path / "query.png"
    _square("red").resize((200, 200)).save(query)
    found = find_similar(run_dir, [str(query)], top=2, out=tmp_path / "sim")
    assert {Path(m.path).stem for m in found.answers[0]} <= {"red", "red_small", "red_recoded"}
    assert found.sheets and found.sheets[0].stat().st_size > 1000


def test_new_images_are_embedded_only_by_the_recorded_model(look_alikes: tuple[Path, Embeddings]) -> None:
    _, embeddings = look_alikes
    assert extractor_for(embeddings.model).model_id == embeddings.model_id
    with pytest.raises(UsageError, match="re-embed"):
        extractor_for(replace(embeddings.model, model_id="efficientnet-lite0:0000"))
    with pytest.raises(UsageError, match="not made by pixclust"):
        extractor_for(ModelRecord(model=None, weights=WeightsSource("precomputed")))
