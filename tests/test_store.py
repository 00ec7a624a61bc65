from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pixclust.atomic import atomic_path
from pixclust.embedding import store as store_module
from pixclust.embedding.pixel_stats import IMAGE_STATS
from pixclust.embedding.store import EMBEDDINGS_FILE, EmbeddingStore, content_hash
from pixclust.embeddings import Embeddings


def _embeddings(n: int, model_id: str = "m:1", offset: int = 0) -> Embeddings:
    rng = np.random.default_rng(offset)
    return Embeddings(
        paths=[f"/photos/{offset + i}.jpg" for i in range(n)],
        vectors=rng.standard_normal((n, 4)).astype(np.float32),
        content_hashes=[f"h{offset + i}" for i in range(n)],
        file_sizes=np.arange(n, dtype=np.int64) + 100,
        mtimes_ns=np.arange(n, dtype=np.int64) + 10**18,
        image_sizes=np.tile([[64, 48]], (n, 1)).astype(np.int32),
        model_id=model_id,
        image_stats=rng.uniform(size=(n, len(IMAGE_STATS))).astype(np.float32),
    )


def test_content_hash_follows_bytes_not_names(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    c.write_bytes(b"other bytes")
    assert content_hash(a) == content_hash(b) != content_hash(c)
    assert len(content_hash(a)) == 32


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    original = _embeddings(5)
    store.save(original)
    loaded = store.load()
    assert loaded.paths == original.paths
    assert loaded.content_hashes == original.content_hashes
    np.testing.assert_array_equal(loaded.vectors, original.vectors)
    np.testing.assert_array_equal(loaded.image_sizes, original.image_sizes)
    assert loaded.model_id == "m:1"
    schema = pq.read_schema(tmp_path / EMBEDDINGS_FILE)
    assert schema.field("vector").type.list_size == 4


def test_known_combines_saved_file_and_partial_shards_for_one_model(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    store.save(_embeddings(3))
    store.save_partial(_embeddings(2, offset=10).to_table())
    store.save_partial(_embeddings(2, model_id="other:9", offset=20).to_table())
    known = store.known("m:1")
    assert set(known.row_of_hash) == {"h0", "h1", "h2", "h10", "h11"}
    assert known.hash_by_stat[("/photos/10.jpg", 100, 10**18)] == "h10"
    assert store.known("other:9").row_of_hash.keys() == {"h20", "h21"}


def test_final_save_replaces_the_shards(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    store.save_partial(_embeddings(2).to_table())
    assert store.partial_dir.is_dir()
    store.save(_embeddings(2))
    assert not store.partial_dir.exists()
    assert [p.name for p in tmp_path.iterdir()] == [EMBEDDINGS_FILE]


def test_a_damaged_store_is_treated_as_empty_not_fatal(tmp_path: Path) -> None:
    (tmp_path / EMBEDDINGS_FILE).write_bytes(b"PAR1 this is not parquet")
    assert EmbeddingStore(tmp_path).known("m:1").row_of_hash == {}


def test_load_gives_one_float32_array_that_owns_its_memory(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    store.save(_embeddings(5))
    vectors = store.load().vectors
    # Not a view into Arrow's buffers, nor rows gathered one by one: one block, written once.
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous and vectors.flags.owndata


def test_known_reads_batch_by_batch_keeping_only_its_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny batches and row groups, so the model filter has to line up across many of them.
    monkeypatch.setattr(store_module, "BATCH_ROWS", 3)
    mine, other = _embeddings(7), _embeddings(6, model_id="other:9", offset=20)
    order = [0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1]
    picks = [iter(range(7)), iter(range(6))]
    rows = [(which, next(picks[which])) for which in order]
    mixed = pa.concat_tables([(mine, other)[which].to_table().slice(row, 1) for which, row in rows])
    store = EmbeddingStore(tmp_path)
    with atomic_path(store.path) as tmp:
        store_module.write_store_table(mixed, tmp)
    known = store.known("m:1")
    assert known.content_hashes == mine.content_hashes
    np.testing.assert_array_equal(known.vectors, mine.vectors)
    np.testing.assert_array_equal(known.image_sizes, mine.image_sizes)
    np.testing.assert_array_equal(store.known("other:9").vectors, other.vectors)


def test_holds_only_exactly_the_saved_rows_with_no_shards_left(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path)
    assert not store.holds(_embeddings(3))
    saved = _embeddings(3)
    store.save(saved)
    assert store.holds(_embeddings(3))
    touched = _embeddings(3)
    touched.mtimes_ns[1] += 1
    assert not store.holds(touched)
    assert not store.holds(_embeddings(2))
    reordered = _embeddings(3)
    reordered.paths.reverse()
    assert not store.holds(reordered)
    store.save_partial(_embeddings(1, offset=10).to_table())
    assert not store.holds(saved)


def test_rows_stored_without_pixel_stats_are_not_reused(tmp_path: Path) -> None:
    """Rows `pixclust add` kept from a store of before pixel stats: their vectors are fine, but made again to measure them."""
    store = EmbeddingStore(tmp_path)
    measured, unmeasured = _embeddings(3), _embeddings(2, offset=10)
    unmeasured.image_stats[:] = np.nan
    store.save(measured.followed_by(unmeasured))
    known = store.known("m:1")
    assert known.content_hashes == measured.content_hashes
    np.testing.assert_array_equal(known.image_stats, measured.image_stats)
    assert np.isnan(store.load().image_stats[3:]).all()
