from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixclust.embedding.embedder import Embedder, ImageDecoder, decoded_batches, default_num_workers
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.files import REASON_CORRUPT, REASON_EMPTY
from pixclust.embedding.runtimes import _NVIDIA_DRIVER_FILES
from pixclust.errors import PixclustError, UsageError


def _photo_folder(root: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)
        path = root / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def _run(embedder: Embedder, paths: list[str]) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    vectors = np.full((len(paths), embedder.extractor.dim), np.nan, np.float32)
    sizes = np.zeros((len(paths), 2), np.int32)
    failures = {}
    for batch in embedder.iter_batches(paths):
        vectors[batch.indices] = batch.vectors
        sizes[batch.indices] = batch.image_sizes
        failures.update({index: error.reason for index, error in batch.failures})
    return vectors, failures, sizes


def test_bad_files_are_reported_and_the_rest_embedded_in_order(tmp_path: Path, default_extractor) -> None:
    paths = _photo_folder(tmp_path, 6)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(paths[0]).read_bytes()[:200])
    paths[2:2] = [str(empty), str(truncated)]

    vectors, failures, sizes = _run(Embedder(default_extractor, batch_size=3), paths)

    assert failures == {2: REASON_EMPTY, 3: REASON_CORRUPT}
    good = [i for i in range(len(paths)) if i not in failures]
    assert np.isfinite(vectors[good]).all()
    assert np.isnan(vectors[list(failures)]).all()
    assert sizes[0].tolist() == [64, 48] and sizes[1].tolist() == [64, 49]


def test_worker_processes_give_the_same_vectors_as_inline_decoding(tmp_path: Path) -> None:
    paths = _photo_folder(tmp_path, 40)
    extractor = load_extractor("pixels")
    inline, _, _ = _run(Embedder(extractor, batch_size=8, num_workers=0), paths)
    pooled, _, _ = _run(Embedder(extractor, batch_size=8, num_workers=2), paths)
    np.testing.assert_array_equal(inline, pooled)


def test_batch_size_does_not_change_the_embedding(tmp_path: Path, default_extractor) -> None:
    paths = _photo_folder(tmp_path, 5)
    one_by_one, _, _ = _run(Embedder(default_extractor, batch_size=1), paths)
    batched, _, _ = _run(Embedder(default_extractor, batch_size=5), paths)
    cosine = np.sum(one_by_one * batched, axis=1) / (
        np.linalg.norm(one_by_one, axis=1) * np.linalg.norm(batched, axis=1)
    )
    assert cosine.min() > 0.9999


def test_invalid_settings_are_usage_errors(default_extractor) -> None:
    with pytest.raises(UsageError, match="--batch-size 0"):
        Embedder(default_extractor, batch_size=0)
    with pytest.raises(UsageError, match="--workers -1"):
        Embedder(default_extractor, num_workers=-1)


def test_small_jobs_decode_inline() -> None:
    assert default_num_workers(10, 32) == 0
    assert default_num_workers(10_000, 32) >= 1


class _DieOnTheFourteenth:
    """A transform whose worker dies on the 14th image as the kernel's out-of-memory killer would end it."""

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.height == 48 + 13:
            os._exit(9)  # no exception, no cleanup
        return np.asarray(image)


def test_a_killed_decode_worker_ends_the_stream_with_one_error(tmp_path: Path) -> None:
    paths = _photo_folder(tmp_path, 24)
    with pytest.raises(PixclustError, match=r"decoding worker was killed.*--workers"):
        for _ in decoded_batches(
            paths, ImageDecoder(_DieOnTheFourteenth(), draft_size=64), batch_size=4, num_workers=2
        ):
            pass


def test_a_script_without_a_main_guard_can_decode_in_workers(tmp_path: Path) -> None:
    """Where workers start by re-running the main script (Python 3.14's default fork server), this would recurse."""
    paths = _photo_folder(tmp_path, 8)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pixclust.embedding.embedder import ImageDecoder, decoded_batches\n"
        "from pixclust.embedding.transforms import PixelTransform\n"
        f"batches = decoded_batches({paths!r}, ImageDecoder(PixelTransform(), draft_size=64), batch_size=2, num_workers=2)\n"
        "print(sum(len(batch) for batch in batches))\n"
    )
    finished = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["8"]


def test_augmentation_depends_on_the_seed_and_the_batch_not_on_the_workers(tmp_path: Path) -> None:
    from pixclust.embedding.transforms import Preprocessing
    from pixclust.labelling.finetune_training import AugmentingTransform

    # One picture eight times: every difference between the outputs is the augmentation's.
    picture = _photo_folder(tmp_path, 1)[0]
    paths = [picture] * 8
    augment = AugmentingTransform(Preprocessing(32, 32, "bilinear", (0.5,) * 3, (0.5,) * 3, "center"))

    def decoded(seed: int, workers: int) -> np.ndarray:
        batches = decoded_batches(
            paths, ImageDecoder(augment, draft_size=64, seed=seed), batch_size=2, num_workers=workers
        )
        return np.stack([item.array for batch in batches for item in batch])

    inline = decoded(seed=1, workers=0)
    np.testing.assert_array_equal(decoded(seed=1, workers=2), inline)
    assert len({array.tobytes() for array in inline}) == len(paths)
    assert not np.array_equal(decoded(seed=2, workers=0), inline)


def test_embedding_a_folder_imports_neither_scikit_learn_nor_matplotlib(tmp_path: Path, default_extractor) -> None:
    """Start-up is part of what a user waits for: embedding alone must not load the clustering stack."""
    _photo_folder(tmp_path, 3)
    probe = (
        "import sys, pixclust\n"
        f"pixclust.embed({str(tmp_path)!r}, quiet=True)\n"
        "print(' '.join(sorted(m for m in ('sklearn', 'matplotlib', 'scipy', 'torch', 'timm') if m in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ)
    expected = set() if not any(os.path.exists(p) for p in _NVIDIA_DRIVER_FILES) else {"torch"}
    # With the network exported and its record cached (default_extractor did both), neither torch nor timm is needed.
    assert set(loaded.stdout.split()) <= expected


def test_vectors_that_cannot_fit_in_memory_are_refused_before_any_image_is_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import write_digit_tree
    from typer.testing import CliRunner

    from pixclust.cli import app
    from pixclust.embedding import extraction

    assert extraction.memory_bytes() > 2**28
    images = write_digit_tree(tmp_path / "images", per_class=2)
    # Six images of 1,280 float32 numbers are 30,720 bytes: a machine of 30,000 bytes cannot hold them.
    monkeypatch.setattr(extraction, "memory_bytes", lambda: 30_000)
    result = CliRunner().invoke(app, ["cluster", str(images), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and isinstance(result.exception, UsageError), result.output
    assert "6 images of 1,280 numbers are 0.0 GiB of vectors, more than this machine's" in str(result.exception)
    assert "pixclust embed-shards" in str(result.exception)
    assert not (tmp_path / "run" / "embeddings.partial").exists()
    monkeypatch.setattr(extraction, "memory_bytes", lambda: 30_720)
    assert len(extraction.embed(images, quiet=True)) == 6


def test_gathering_lets_each_chunk_of_fresh_vectors_go_once_its_rows_are_copied() -> None:
    import weakref

    from pixclust.embedding.extraction import _gather, _releasing_vector_of
    from pixclust.embedding.pixel_stats import unmeasured
    from pixclust.embedding.store import KnownEmbeddings, StoredVector

    rng = np.random.default_rng(0)
    chunks = [rng.random((3, 4), dtype=np.float32) for _ in range(3)]
    stats = unmeasured(1)[0]
    fresh = {f"{c}-{r}": StoredVector(chunk[r], 8, 8, stats) for c, chunk in enumerate(chunks) for r in range(3)}
    expected = {digest: stored.vector.copy() for digest, stored in fresh.items()}
    stored_vector = rng.random((1, 4), dtype=np.float32)
    known = KnownEmbeddings(
        content_hashes=["old"],
        row_of_hash={"old": 0},
        vectors=stored_vector,
        image_sizes=np.array([[8, 8]], dtype=np.int32),
        image_stats=unmeasured(1),
    )
    alive = [weakref.ref(chunk) for chunk in chunks]
    del chunks
    # In the order the files were embedded, with a stored vector and a copy of a file ("1-0" twice) among them.
    digests = ["0-0", "0-1", "old", "0-2", "1-0", "1-1", "1-0", "1-2", "2-0", "2-1", "2-2"]
    lookup = _releasing_vector_of(fresh, known, digests)
    chunks_alive_at = {}

    def recording(digest: str) -> StoredVector:
        chunks_alive_at[digest] = [ref() is not None for ref in alive]
        return lookup(digest)

    vectors, _, _ = _gather(digests, recording, 4)
    for row, digest in enumerate(digests):
        np.testing.assert_array_equal(vectors[row], stored_vector[0] if digest == "old" else expected[digest])
    # The row copied last is still in hand while the next one is looked up: a chunk goes one row after its last.
    assert chunks_alive_at["1-1"] == [False, True, True]
    assert chunks_alive_at["2-1"] == [False, False, True]
    assert fresh == {} and all(ref() is None for ref in alive)
