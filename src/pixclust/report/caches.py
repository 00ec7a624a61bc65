"""The report's caches in the run folder: display maps (``maps.parquet``) and duplicate groups (``duplicates.parquet``).

Each file carries a fingerprint of the embeddings it was made from (the model
id and the content hashes in row order) and of its settings, so a rebuild
reuses it only when nothing it depends on changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pixclust.atomic import atomic_path
from pixclust.clustering.maps import map_basis, map_coordinates
from pixclust.curation import verify
from pixclust.curation.duplicates import DuplicateGroup, DuplicateReport, find_duplicates
from pixclust.embedding.store import read_table_or_none
from pixclust.progress import progress_bar
from pixclust.report.run_view import RunView
from pixclust.runs.folder import (
    DUPLICATES_FILE,
    MAPS_FILE,
)

_DUPLICATES_SCHEMA = pa.schema(
    [
        ("rows", pa.list_(pa.int64())),
        ("keeper", pa.int64()),
        ("kind", pa.string()),
        ("min_similarity", pa.float64()),
        ("kinds", pa.list_(pa.string())),
        ("evidence", pa.list_(pa.string())),
    ]
)
# The verifier's settings are part of the answer: groups found with other ones are found again.
_VERIFIER = " ".join(
    f"{name}={getattr(verify, name)}"
    for name in (
        "SAME_STRUCTURE",
        "SAME_STRUCTURE_SMALL",
        "DIFFERENT_STRUCTURE",
        "SAME_GEOMETRY_INLIERS",
        "GREY_CHROMA",
        "SAME_COLOUR",
    )
)


def load_maps(view: RunView, methods: tuple[str, ...], *, random_state: int = 0) -> dict[str, dict[int, np.ndarray]]:
    """2-D and 3-D coordinates per map method, from ``maps.parquet`` when it matches these embeddings."""
    fingerprint = _fingerprint(view)
    cache_file = view.run_dir / MAPS_FILE
    cached = _read_maps(cache_file, fingerprint, len(view.paths))
    wanted = [(method, dims) for method in methods for dims in (2, 3)]
    missing = [key for key in wanted if key not in cached]
    if missing:
        with progress_bar("maps", len(missing), unit="maps") as advance:
            basis = map_basis(view.vectors, random_state=random_state)
            for method, dims in missing:
                cached[(method, dims)] = map_coordinates(basis, method, n_components=dims, random_state=random_state)
                advance(1)
        _write_maps(cache_file, fingerprint, cached)
    maps: dict[str, dict[int, np.ndarray]] = {}
    for method, dims in wanted:
        maps.setdefault(method, {})[dims] = cached[(method, dims)]
    return maps


def _fingerprint(view: RunView, *settings: str) -> str:
    """Names the embeddings (model, and content in row order) and the settings a cache was made from."""
    model_id = view.record.model_id
    return hashlib.sha256("\n".join([model_id, *view.hashes, *settings]).encode()).hexdigest()


def _read_maps(cache_file: Path, fingerprint: str, n: int) -> dict[tuple[str, int], np.ndarray]:
    table = read_table_or_none(cache_file)
    if table is None:
        return {}
    metadata = table.schema.metadata or {}
    if metadata.get(b"fingerprint", b"").decode() != fingerprint or table.num_rows != n:
        return {}
    found: dict[tuple[str, int], np.ndarray] = {}
    for name in table.column_names:
        method, dims = name.rsplit("_", 1)
        dims_count = int(dims.removesuffix("d"))
        flat = table.column(name).combine_chunks().flatten().to_numpy()
        found[(method, dims_count)] = flat.reshape(-1, dims_count).astype(np.float32)
    return found


def _write_maps(cache_file: Path, fingerprint: str, maps: dict[tuple[str, int], np.ndarray]) -> None:
    columns = {
        f"{method}_{dims}d": pa.FixedSizeListArray.from_arrays(pa.array(coords.reshape(-1)), dims)
        for (method, dims), coords in maps.items()
    }
    table = pa.table(columns).replace_schema_metadata({"fingerprint": fingerprint})
    with atomic_path(cache_file) as tmp:
        pq.write_table(table, tmp)


def load_duplicates(view: RunView) -> DuplicateReport:
    """Duplicate groups at the finder's defaults, from ``duplicates.parquet`` when it matches these embeddings."""
    fingerprint = _fingerprint(view, f"duplicates 2 {_VERIFIER}")
    cache_file = view.run_dir / DUPLICATES_FILE
    cached = _read_duplicates(cache_file, fingerprint)
    if cached is not None:
        return cached
    # One step, so a long search over many images still shows that it is running and for how long.
    found = find_duplicates(view.embeddings)
    _write_duplicates(cache_file, fingerprint, found)
    return found


def _read_duplicates(cache_file: Path, fingerprint: str) -> DuplicateReport | None:
    table = read_table_or_none(cache_file)
    if table is None:
        return None
    metadata = table.schema.metadata or {}
    if metadata.get(b"fingerprint", b"").decode() != fingerprint or table.schema.names != _DUPLICATES_SCHEMA.names:
        return None
    columns = (table.column(name).to_pylist() for name in _DUPLICATES_SCHEMA.names)
    groups = [
        DuplicateGroup(tuple(rows), keeper, kind, sim, tuple(kinds), tuple(evidence))
        for rows, keeper, kind, sim, kinds, evidence in zip(*columns, strict=True)
    ]
    return DuplicateReport(groups, **json.loads(metadata[b"counts"]))


def _write_duplicates(cache_file: Path, fingerprint: str, found: DuplicateReport) -> None:
    table = pa.table(
        {
            "rows": [list(group.rows) for group in found.groups],
            "keeper": [group.keeper for group in found.groups],
            "kind": [group.kind for group in found.groups],
            "min_similarity": [group.min_similarity for group in found.groups],
            "kinds": [list(group.kinds) for group in found.groups],
            "evidence": [list(group.evidence) for group in found.groups],
        },
        schema=_DUPLICATES_SCHEMA,
    )
    counts = {name: value for name, value in vars(found).items() if name != "groups"}
    with atomic_path(cache_file) as tmp:
        pq.write_table(table.replace_schema_metadata({"fingerprint": fingerprint, "counts": json.dumps(counts)}), tmp)
