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
from pixclust.clustering.maps import map_basis, map_coordinates, place_by_neighbours
from pixclust.curation import verify
from pixclust.curation.duplicates import (
    DEFAULT_CANDIDATE_SIMILARITY,
    DuplicateGroup,
    DuplicateReport,
    extend_duplicates,
    find_duplicates,
)
from pixclust.embedding.store import read_table_or_none
from pixclust.embeddings import Embeddings
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
_DUPLICATE_SETTINGS = f"duplicates 2 {_VERIFIER}"


def load_maps(view: RunView, methods: tuple[str, ...], *, random_state: int = 0) -> dict[str, dict[int, np.ndarray]]:
    """2-D and 3-D coordinates per map method, from ``maps.parquet`` when it matches these embeddings.

    A cache made before ``pixclust add`` appended rows still serves: the new rows are placed
    in each map where their nearest earlier images are (``maps.place_by_neighbours``).
    """
    fingerprint = _fingerprint(view.record.model_id, view.hashes)
    cache_file = view.run_dir / MAPS_FILE
    cached, n_cached = _read_maps(cache_file, view.record.model_id, view.hashes)
    if cached and n_cached < len(view.paths):
        placed = place_by_neighbours(view.vectors[:n_cached], view.vectors[n_cached:])
        cached = {key: np.concatenate([coords, placed(coords)]) for key, coords in cached.items()}
        _write_maps(cache_file, fingerprint, cached)
    wanted = [(method, dims) for method in methods for dims in (2, 3)]
    missing = [key for key in wanted if key not in cached]
    if missing:
        with progress_bar("maps", len(missing), unit="maps") as advance:
            basis = map_basis(view.vectors, random_state=random_state)
            for method, dims in missing:
                # The 3-D t-SNE map goes on from the 2-D one, made first (``wanted``'s order) or cached.
                flat = cached.get((method, 2)) if method == "tsne" and dims == 3 else None
                cached[(method, dims)] = map_coordinates(
                    basis, method, n_components=dims, random_state=random_state, flat_map=flat
                )
                advance(1)
        _write_maps(cache_file, fingerprint, cached)
    maps: dict[str, dict[int, np.ndarray]] = {}
    for method, dims in wanted:
        maps.setdefault(method, {})[dims] = cached[(method, dims)]
    return maps


def _fingerprint(model_id: str, hashes: list[str], *settings: str) -> str:
    """Names the embeddings (model, and content in row order) and the settings a cache was made from."""
    return hashlib.sha256("\n".join([model_id, *hashes, *settings]).encode()).hexdigest()


def _read_maps(cache_file: Path, model_id: str, hashes: list[str]) -> tuple[dict[tuple[str, int], np.ndarray], int]:
    """The cached maps and the rows they cover: all of ``hashes``, or the first of them (rows added since)."""
    table = read_table_or_none(cache_file)
    if table is None or table.num_rows > len(hashes):
        return {}, 0
    metadata = table.schema.metadata or {}
    if metadata.get(b"fingerprint", b"").decode() != _fingerprint(model_id, hashes[: table.num_rows]):
        return {}, 0
    found: dict[tuple[str, int], np.ndarray] = {}
    for name in table.column_names:
        method, dims = name.rsplit("_", 1)
        dims_count = int(dims.removesuffix("d"))
        flat = table.column(name).combine_chunks().flatten().to_numpy()
        found[(method, dims_count)] = flat.reshape(-1, dims_count).astype(np.float32)
    return found, table.num_rows


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
    return duplicates_of(view.run_dir, view.record.model_id, view.embeddings)


def duplicates_of(run_dir: Path, model_id: str, embeddings: Embeddings) -> DuplicateReport:
    """The run's duplicate groups, cached in ``duplicates.parquet``.

    A cache of the first rows (those before a ``pixclust add``) is extended with the rest
    (``duplicates.extend_duplicates``), at the cost of the rows added.
    """
    cache_file = run_dir / DUPLICATES_FILE
    fingerprint = _fingerprint(model_id, embeddings.content_hashes, _DUPLICATE_SETTINGS)
    cached = _read_duplicates(cache_file, model_id, embeddings.content_hashes)
    if cached is not None and cached.n_images == len(embeddings):
        return cached
    # One step, so a long search over many images still shows that it is running and for how long.
    found = find_duplicates(embeddings) if cached is None else extend_duplicates(embeddings, cached, cached.n_images)
    _write_duplicates(cache_file, fingerprint, found)
    return found


def cached_duplicates(run_dir: Path, model_id: str, embeddings: Embeddings) -> DuplicateReport | None:
    """The run's duplicate groups as its report cached them, for every image; None when there is no such cache."""
    cached = _read_duplicates(run_dir / DUPLICATES_FILE, model_id, embeddings.content_hashes)
    return cached if cached is not None and cached.n_images == len(embeddings) else None


def duplicates_with_added(run_dir: Path, model_id: str, embeddings: Embeddings, first_new: int) -> DuplicateReport:
    """Groups right for every row from ``first_new`` on (those ``pixclust add`` brought).

    With a cache of the rows before (a run that made its report) this is the whole run's
    answer, cached for the report; without one, only groups that hold a new row are known,
    and nothing is cached.
    """
    cached = _read_duplicates(run_dir / DUPLICATES_FILE, model_id, embeddings.content_hashes)
    if cached is not None and cached.n_images == first_new:
        return duplicates_of(run_dir, model_id, embeddings)
    return extend_duplicates(embeddings, DuplicateReport([], DEFAULT_CANDIDATE_SIMILARITY, first_new), first_new)


def _read_duplicates(cache_file: Path, model_id: str, hashes: list[str]) -> DuplicateReport | None:
    """The cached groups, if they were found among all of ``hashes`` or the first of them."""
    table = read_table_or_none(cache_file)
    if table is None or table.schema.names != _DUPLICATES_SCHEMA.names:
        return None
    metadata = table.schema.metadata or {}
    try:
        counts = json.loads(metadata[b"counts"])
        n_images = int(counts["n_images"])
    except (KeyError, ValueError, TypeError):
        return None
    expected = _fingerprint(model_id, hashes[:n_images], _DUPLICATE_SETTINGS)
    if n_images > len(hashes) or metadata.get(b"fingerprint", b"").decode() != expected:
        return None
    columns = (table.column(name).to_pylist() for name in _DUPLICATES_SCHEMA.names)
    groups = [
        DuplicateGroup(tuple(rows), keeper, kind, sim, tuple(kinds), tuple(evidence))
        for rows, keeper, kind, sim, kinds, evidence in zip(*columns, strict=True)
    ]
    return DuplicateReport(groups, **counts)


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
