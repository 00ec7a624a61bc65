"""``pixclust duplicates-shards``: duplicate groups among embeddings no process holds whole, found on Ray.

The folder given gets ``duplicates.csv`` (the columns of ``pixclust
duplicates``'s), written by this process under the folder's lock; the Ray
tasks only read the input and the image files. A folder holding a
``pixclust cluster`` run is refused, as ``cluster-shards`` refuses it: its
report keeps its own duplicate groups.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pixclust.curation.duplicates import DEFAULT_CANDIDATES, DEFAULT_KEEP, DuplicateReport
from pixclust.curation.lookalikes import write_duplicates_csv
from pixclust.distributed.duplicates import GroupRows, ShardedDuplicateFinder
from pixclust.distributed.parts import VectorParts
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S
from pixclust.embedding.engines.ray import ray_session
from pixclust.index import DEFAULT_NPROBE
from pixclust.progress import quietly
from pixclust.runs.folder import DUPLICATES_CSV, RunFolder
from pixclust.runs.sharded import refuse_inputs_inside, refuse_local_run


@dataclass(frozen=True)
class ShardedDuplicates:
    """What :func:`duplicates_shards` found: ``report`` (groups over the rows of ``rows``), ``csv_path``, whether
    pairs were compared on their files (``verified_files``), the index's ``layout``, ``seconds`` in all and the
    ``timings`` of the passes (seconds)."""

    report: DuplicateReport
    rows: GroupRows
    csv_path: Path
    verified_files: bool
    layout: dict[str, int]
    seconds: float
    timings: dict[str, float]


def duplicates_shards(
    vectors: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    threshold: float | None = None,
    neighbours: int = DEFAULT_CANDIDATES,
    colour: bool = True,
    keep: str = DEFAULT_KEEP,
    mirror: bool = False,
    verify_files: bool | None = None,
    sample_size: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    random_state: int = 0,
    address: str | None = None,
    ray_wait: float = DEFAULT_RAY_WAIT_S,
    quiet: bool = False,
) -> ShardedDuplicates:
    """Duplicate groups among the embeddings in ``vectors`` (Parquet files of path and vector rows, folders of
    them, or a run folder), found on Ray and written to ``out/duplicates.csv``.

    The settings are ``pixclust duplicates``'s; see
    :class:`~pixclust.distributed.duplicates.ShardedDuplicateFinder` for the method and the rest.
    ``address`` and ``ray_wait`` are as for :func:`~pixclust.runs.sharded.cluster_shards`.
    """
    started = time.perf_counter()
    data = VectorParts.plan(vectors)
    finder = ShardedDuplicateFinder(
        threshold=threshold,
        neighbours=neighbours,
        colour=colour,
        keep=keep,
        mirror=mirror,
        verify_files=verify_files,
        sample_size=sample_size,
        nprobe=nprobe,
        random_state=random_state,
        ray_wait=ray_wait,
    )
    finder.check()
    folder = RunFolder.open(out)
    refuse_inputs_inside(data, folder.root)
    refuse_local_run(folder, out)
    with ray_session(address) as ray, folder.writing(), quietly(quiet):
        refuse_local_run(folder, out)
        folder.claim_files([DUPLICATES_CSV])
        finder.fit(data, ray=ray)
        csv_path = write_duplicates_csv(folder.path(DUPLICATES_CSV), finder.rows_, finder.report_)
    return ShardedDuplicates(
        finder.report_,
        finder.rows_,
        csv_path,
        finder.verified_files_,
        finder.layout_,
        time.perf_counter() - started,
        finder.timings_,
    )
