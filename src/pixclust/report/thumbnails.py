"""Small WebP thumbnails for the report, cached by content hash in the run folder.

Thumbnails are made in worker processes (decoding is the cost) and kept in
``thumbnails.parquet``, so rebuilding a report, or re-clustering the same
images with another k, decodes nothing again.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pixclust.atomic import atomic_path
from pixclust.embedding.decode import load_rgb
from pixclust.embedding.store import read_table_or_none
from pixclust.errors import DecodeError
from pixclust.progress import progress_bar
from pixclust.runs.folder import THUMBNAILS_FILE
from pixclust.workers import map_chunks

THUMB_SIDE = 80
_WEBP_QUALITY = 70
_CHUNK = 64
_SCHEMA = pa.schema([("content_hash", pa.string()), ("side", pa.int32()), ("webp", pa.binary())])


def thumbnail_bytes(path: str, side: int = THUMB_SIDE) -> bytes | None:
    """WebP bytes of the image shrunk to fit ``side`` x ``side``, or None if it cannot be decoded now."""
    try:
        image = load_rgb(path, draft_size=side)
    except DecodeError:
        return None
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=_WEBP_QUALITY, method=4)
    return buffer.getvalue()


def _thumbnail_chunk(paths: Sequence[str], side: int) -> list[bytes | None]:
    return [thumbnail_bytes(path, side) for path in paths]


def load_thumbnails(
    run_dir: Path, paths: Sequence[str], hashes: Sequence[str], *, side: int = THUMB_SIDE
) -> dict[str, bytes]:
    """Thumbnail per content hash for the given files, made where missing and saved back to the cache."""
    cache_file = run_dir / THUMBNAILS_FILE
    cached = _read_cache(cache_file, side)
    missing = {digest: path for path, digest in zip(paths, hashes, strict=True) if digest not in cached}
    if missing:
        digests, files = list(missing), list(missing.values())
        chunks = [files[i : i + _CHUNK] for i in range(0, len(files), _CHUNK)]
        made: list[bytes | None] = []
        with progress_bar("thumbnails", len(files)) as advance:
            for result in map_chunks(_thumbnail_chunk, chunks, side):
                made.extend(result)
                advance(len(result))
        fresh = {digest: data for digest, data in zip(digests, made, strict=True) if data is not None}
        cached.update(fresh)
        _write_cache(cache_file, cached, side)
    return {digest: cached[digest] for digest in hashes if digest in cached}


def _read_cache(cache_file: Path, side: int) -> dict[str, bytes]:
    table = read_table_or_none(cache_file)
    if table is None:
        return {}
    return {
        digest: data
        for digest, stored_side, data in zip(
            table.column("content_hash").to_pylist(),
            table.column("side").to_pylist(),
            table.column("webp").to_pylist(),
            strict=True,
        )
        if stored_side == side
    }


def _write_cache(cache_file: Path, thumbnails: dict[str, bytes], side: int) -> None:
    table = pa.table(
        {"content_hash": list(thumbnails), "side": [side] * len(thumbnails), "webp": list(thumbnails.values())},
        schema=_SCHEMA,
    )
    with atomic_path(cache_file) as tmp:
        pq.write_table(table, tmp)
