"""Clustering embeddings no process holds whole: fitted on a sample on the driver, every row placed by Ray tasks.

1. Sample. The driver draws ``sample_size`` rows uniformly (``max(100 k,
   100,000)`` by default, as ``LargeKMeans`` samples, with k the largest asked
   for) and Ray tasks read them from their parts, which is the only pass
   over the data before the last.
2. Fit. ``pixclust.cluster``'s own code (``cluster_views``) runs on the
   sample in the driver: the fixed pipeline (L2, PCA-50, k-means) or the
   default one (PCA-128, k by modularity, k-means and the neighbour
   refinement; with the images' HOG vectors, the choice of joining them),
   with every adaptive choice made on the sample. Its :class:`ClusterModel` (the PCA,
   the centres or the refinement's head, novelty references) is what a run
   keeps to place images later (``cluster_model.npz``).
3. Place. One Ray task per part reads its rows, projects them with the
   model's PCA and places each (cluster, distance to its centre, novelty, x
   and y on the map), and hands back a small table that the driver passes to
   a sink (the run folder's writer) as it comes. At most two tasks per CPU
   are in flight, so finished tables never pile up in the driver.

Where the data fit the sample, the fit is the local pipeline's own on every
row, and its placement gives each row the cluster the local run gives it.
Cluster ids are ordered by size in the sample (0 = largest there), which
is the order of the whole data up to sampling noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pixclust.clustering.clusterer import ClusterResult
from pixclust.clustering.k_selection import check_k_settings
from pixclust.clustering.large_kmeans import MIN_SAMPLE, POINTS_PER_CENTRE
from pixclust.clustering.placement import ClusterModel
from pixclust.clustering.reduce import is_whole_number
from pixclust.clustering.views import EMBEDDING_VIEW, HOG_VIEW, handmade_views
from pixclust.distributed.parts import PATH_COLUMN, Part, Segment, VectorParts, part_vectors, read_part, read_segments
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S, check_engine
from pixclust.embedding.engines.ray import run_tasks
from pixclust.errors import UsageError

PIPELINES = ("fixed", "auto")
# Rows placed at once inside a task: the placement's temporaries stay a few hundred MB.
_PLACE_CHUNK = 16_384

PLACED_SCHEMA = pa.schema(
    [
        (PATH_COLUMN, pa.string()),
        ("cluster_id", pa.int32()),
        ("distance", pa.float32()),
        ("novel", pa.bool_()),
        ("x", pa.float32()),
        ("y", pa.float32()),
    ]
)

Sink = Callable[[int, pa.Table], None]


class ShardedClusterer:
    """Cluster the rows of a :class:`VectorParts` on Ray (see the module docstring).

    ``pipeline`` is ``"fixed"`` (k-means on L2 + PCA-50) or ``"auto"`` (the
    default pipeline, with HOG when :meth:`fit` is given the images' HOG
    vectors). ``k`` is a number or ``"auto"`` (scanned over ``k_range`` on the
    sample). ``ray_wait``: seconds the run may find the cluster without a CPU
    before it stops. Fitted attributes: ``model_`` (the :class:`ClusterModel`),
    ``sample_result_`` (the sample's :class:`ClusterResult`: k scan,
    silhouette, what was chosen), ``sample_size_``, ``n_rows_``,
    ``n_clusters_``, ``counts_`` (rows per cluster id), ``novel_`` (rows placed
    outside every cluster's radius), ``inertia_`` (sum of squared distances to
    the centres) and ``timings_`` (seconds gathering the sample, fitting, placing).
    """

    def __init__(
        self,
        *,
        k: int | str = "auto",
        pipeline: str = "auto",
        k_range: tuple[int, int] = (2, 20),
        sample_size: int | None = None,
        random_state: int = 0,
        ray_wait: float = DEFAULT_RAY_WAIT_S,
    ) -> None:
        self.k = k
        self.pipeline = pipeline
        self.k_range = k_range
        self.sample_size = sample_size
        self.random_state = random_state
        self.ray_wait = ray_wait

    def check(self, n_rows: int) -> None:
        """Raise :class:`UsageError` for settings that cannot cluster ``n_rows`` rows; :meth:`fit` calls it before
        reading anything, so that a mistake costs no pass over the data."""
        if self.pipeline not in PIPELINES:
            raise UsageError(f"pipeline {self.pipeline!r} is not known for sharded clustering; choose fixed or auto")
        if self.sample_size is not None and (not is_whole_number(self.sample_size) or self.sample_size < 3):
            raise UsageError(f"sample_size {self.sample_size!r} is not allowed; use a whole number >= 3")
        check_engine("ray", None, ray_wait=self.ray_wait)
        check_k_settings(self.k, self.k_range, self.random_state, n_rows)
        if is_whole_number(self.k) and self.k > self.sample_rows(n_rows):
            raise UsageError(
                f"k={self.k} is more than the {self.sample_rows(n_rows)} rows of the sample; "
                "use a smaller k or a larger sample_size"
            )

    def sample_rows(self, n_rows: int) -> int:
        """How many rows the fit sees: all of them up to the default sample size."""
        largest_k = int(self.k) if is_whole_number(self.k) else int(self.k_range[1])
        return min(n_rows, self.sample_size or max(POINTS_PER_CENTRE * largest_k, MIN_SAMPLE))

    def fit(
        self, data: VectorParts, sink: Sink | None = None, *, ray: Any, hog: VectorParts | None = None
    ) -> ShardedClusterer:
        """Fit on a sample of ``data`` and place every row; ``sink(part index, table)`` gets each part's
        :data:`PLACED_SCHEMA` table as its task finishes (in no set order). ``ray`` is the initialised module.

        ``hog`` is the same images' HOG vectors in the same row order (a run's ``views/hog/``), which the
        default pipeline may join to the embedding as a local run does; the fixed pipeline does not read it.
        """
        from pixclust.runs.pipeline import cluster_views

        self.check(data.n_rows)
        hog = hog if self.pipeline == "auto" else None
        if hog is not None and hog.n_rows != data.n_rows:
            raise UsageError(
                f"the HOG files hold {hog.n_rows:,} rows and the embeddings {data.n_rows:,}; "
                "give the HOG vectors of the same images (a run's views/hog/), in the same order"
            )
        started = time.perf_counter()
        size = self.sample_rows(data.n_rows)
        views = gather_rows(data, sample_indices(data.n_rows, size, self.random_state), ray, self.ray_wait, hog=hog)
        self.timings_ = {"sample_s": time.perf_counter() - started}
        started = time.perf_counter()
        result = cluster_views(
            views, k=self.k, pipeline=self.pipeline, k_range=self.k_range, random_state=self.random_state
        )
        if result.model is None:
            raise UsageError("the sample formed no cluster; give more embeddings or a smaller k")
        del views
        self.timings_["fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        self.model_: ClusterModel = result.model
        # The sample's clustering is kept for what it measured (k scan, silhouette, what was chosen).
        self.sample_result_: ClusterResult = result
        self.sample_size_ = size
        self.n_rows_ = data.n_rows
        self.n_clusters_ = self.model_.n_clusters
        self.counts_ = np.zeros(self.n_clusters_, dtype=np.int64)
        self.novel_ = 0
        self.inertia_ = 0.0
        model_ref = ray.put(self.model_)
        place = ray.remote(num_cpus=1)(place_part)
        # HOG is read again only where the fitted model places by it.
        placing_hog = hog if hog is not None and HOG_VIEW in self.model_.views else None
        calls = [
            (lambda part=part: place.remote(part, data.dim, model_ref, _hog_rows(placing_hog, part)))
            for part in data.parts
        ]
        for index, (table, counts, squared) in run_tasks(ray, calls, self.ray_wait):
            self.counts_ += counts
            self.inertia_ += squared
            self.novel_ += int(np.count_nonzero(table.column("novel").to_numpy(zero_copy_only=False)))
            if sink is not None:
                sink(index, table)
        self.timings_["place_s"] = time.perf_counter() - started
        return self


def sample_indices(n_rows: int, size: int, random_state: int) -> np.ndarray:
    """``size`` of the rows ``0 .. n_rows - 1``, drawn uniformly without replacement, ascending (all when ``size`` is)."""
    if size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(random_state).choice(n_rows, size, replace=False))


def gather_rows(
    data: VectorParts, chosen: np.ndarray, ray: Any, wait_s: float, *, hog: VectorParts | None = None
) -> dict[str, np.ndarray]:
    """The views of rows ``chosen`` (ascending) in that order: the embedding, and HOG when given; one task per part."""
    starts = np.array([part.offset for part in data.parts])
    # The chosen rows are sorted, so each part's are one run of them.
    bounds = np.searchsorted(chosen, [*starts, data.n_rows])
    views = {EMBEDDING_VIEW: np.empty((len(chosen), data.dim), dtype=np.float32)}
    if hog is not None:
        views[HOG_VIEW] = np.empty((len(chosen), hog.dim), dtype=np.float32)
    take = ray.remote(num_cpus=1)(sample_part)
    wanted = [
        (index, np.arange(bounds[index], bounds[index + 1]))
        for index in range(len(data.parts))
        if bounds[index + 1] > bounds[index]
    ]
    calls = [
        (
            lambda part=data.parts[index], rows=rows: take.remote(
                part, data.dim, chosen[rows] - part.offset, _hog_rows(hog, part)
            )
        )
        for index, rows in wanted
    ]
    for done, part_views in run_tasks(ray, calls, wait_s):
        for name, vectors in part_views.items():
            views[name][wanted[done][1]] = vectors
    # Parted only now: the tasks hand back the HOG model's vectors whole (with the outline's where they hold it).
    return views | handmade_views(views[HOG_VIEW]) if hog is not None else views


@dataclass(frozen=True)
class HogRows:
    """Where a part's HOG vectors are: ``segments`` of the HOG files, ``dim`` numbers each."""

    segments: tuple[Segment, ...]
    dim: int


def _hog_rows(hog: VectorParts | None, part: Part) -> HogRows | None:
    return None if hog is None else HogRows(hog.segments(part.offset, part.offset + part.rows), hog.dim)


def _part_views(part: Part, dim: int, hog: HogRows | None) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """A part's table and its views, the HOG rows checked to be the same images in the same order."""
    table = read_part(part)
    if table.column(PATH_COLUMN).null_count:
        raise UsageError(f"{part.file} has rows without a path; give every vector the path of its image")
    views = {EMBEDDING_VIEW: part_vectors(table, dim, file=part.file)}
    if hog is not None:
        hog_table = read_segments(hog.segments)
        if not hog_table.column(PATH_COLUMN).equals(table.column(PATH_COLUMN)):
            raise UsageError(
                f"the HOG rows for {part.file} name other images than its embeddings; give the HOG vectors of the "
                "same images in the same order (a run's views/hog/), or leave them out"
            )
        views[HOG_VIEW] = part_vectors(hog_table, hog.dim, file=hog.segments[0].file)
    return table, views


def sample_part(part: Part, dim: int, rows: np.ndarray, hog: HogRows | None) -> dict[str, np.ndarray]:
    """Ray task: the views of ``rows`` (indices within the part, ascending) of one part."""
    _, views = _part_views(part, dim, hog)
    return {name: np.ascontiguousarray(vectors[rows]) for name, vectors in views.items()}


def place_part(part: Part, dim: int, model: ClusterModel, hog: HogRows | None) -> tuple[pa.Table, np.ndarray, float]:
    """Ray task: one part placed by ``model``: its table, rows per cluster, and the sum of squared distances."""
    table, views = _part_views(part, dim, hog)
    if HOG_VIEW in views:
        views |= handmade_views(views[HOG_VIEW])
    n_rows = table.num_rows
    labels = np.empty(n_rows, dtype=np.int32)
    distances = np.empty(n_rows, dtype=np.float32)
    novel = np.empty(n_rows, dtype=bool)
    map_xy = np.zeros((n_rows, 2), dtype=np.float32)
    for start in range(0, n_rows, _PLACE_CHUNK):
        rows = slice(start, start + _PLACE_CHUNK)
        placement = model.place({name: vectors[rows] for name, vectors in views.items()})
        labels[rows] = placement.labels
        distances[rows] = placement.distances
        novel[rows] = placement.novel
        width = min(2, placement.coords.shape[1])
        map_xy[rows, :width] = placement.coords[:, :width]
    placed = pa.Table.from_arrays(
        [
            table.column(PATH_COLUMN).cast(pa.string()),
            pa.array(labels),
            pa.array(distances),
            pa.array(novel),
            pa.array(map_xy[:, 0]),
            pa.array(map_xy[:, 1]),
        ],
        schema=PLACED_SCHEMA,
    )
    counts = np.bincount(labels, minlength=model.n_clusters).astype(np.int64)
    return placed, counts, float(np.sum(distances.astype(np.float64) ** 2))
