"""The HOG view of a run of ``pixclust embed-shards``: parts in ``views/hog/`` that mirror the embedding's parts.

``pixclust cluster`` joins HOG (gradient histograms) to the embedding where
that helps, and on the digits it is most of the score. ``cluster-shards`` pairs
two views row by row, part by part, so the HOG parts hold the embedding parts'
rows, in their order, under their names. Each is made by a Ray task: a HOG part
of the same name is kept (names are random ids, written only to mirror that
part); an embedding part rewritten from another gets the same rows cut from that
part's HOG part; any other is computed from the files its rows name. The HOG
index is replaced before the embedding's, and readers use the view only while
the two indexes name the same parts (:func:`hog_parts_of`), so a run stopped
between the two leaves a view that is refused, never one paired wrongly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pixclust.clustering.views import HOG_VIEW
from pixclust.embedding.embedder import Embedder
from pixclust.embedding.engines.ray import run_tasks
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.models import HOG_MODEL
from pixclust.embedding.part_store import (
    PARTS_INDEX,
    Rewrite,
    commit_index,
    has_parts_index,
    parts_dir,
    read_index,
    remove_unindexed,
    select_rows,
    stored_parts,
    write_part,
)
from pixclust.embeddings import VECTOR_COLUMN, with_vectors
from pixclust.errors import UsageError
from pixclust.names import unescape_name
from pixclust.progress import progress_bar, warn
from pixclust.runs.folder import EMBEDDING_PARTS_DIR, VIEWS_DIR, RunFolder, is_run_folder

# Images a task decodes at once; HOG's input is 128 x 128 grey, so a batch is small however large the files.
_HOG_BATCH = 64


def hog_folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / VIEWS_DIR / HOG_VIEW


def _view_folder(folder: RunFolder) -> RunFolder:
    """The run's HOG view as a run folder of its own, never reached through a link."""
    location = hog_folder(folder.root)
    for step in (location.parent, location):
        if os.path.islink(step):
            raise UsageError(f"{step} is a link, where pixclust keeps the run's HOG view; remove the link")
    return RunFolder.open(location)


def drop_hog_view(folder: RunFolder) -> None:
    """Remove the run's HOG view (its index and parts) where it has one: it would no longer mirror the parts."""
    if not is_run_folder(hog_folder(folder.root)):
        return
    view = _view_folder(folder)
    with view.writing():
        view.remove_file(f"{EMBEDDING_PARTS_DIR}/{PARTS_INDEX}")
        remove_unindexed(view, set())


def make_hog_view(
    ray: ModuleType,
    folder: RunFolder,
    parts: Sequence[tuple[str, int]],
    rewritten_from: Mapping[str, Rewrite],
    *,
    max_pixels: int,
    wait_s: float,
    hog_model: str = HOG_MODEL,
) -> bool:
    """Give every embedding part in ``parts`` (name, rows; the index about to be written) its HOG part, and
    replace the HOG index; False (with a warning) when some image could not be read again: the HOG index is
    then removed, and the HOG parts made are kept for the next run.

    ``rewritten_from`` maps each part this run rewrote to the :class:`Rewrite` that made it; ``hog_model``
    is ``hog``, or ``hog+ink`` beside a network fed ink as grey (``models.hog_model_for``).
    """
    view = _view_folder(folder)
    with view.writing():
        extractor = load_extractor(hog_model)
        held = {part.name: part.rows.num_rows for part in stored_parts(view, extractor.model_id, extractor.dim)}
        cut = ray.remote(num_cpus=1)(select_rows)
        compute = ray.remote(num_cpus=1)(hog_rows)
        calls, names = [], []
        for name, rows in parts:
            if held.get(name) == rows:
                continue
            rewrite = rewritten_from.get(name)
            if rewrite is not None and rewrite.source in held:
                source = str(parts_dir(view.root) / rewrite.source)
                calls.append(lambda source=source, rewrite=rewrite: cut.remote(source, rewrite))
            else:
                embedded = str(parts_dir(folder.root) / name)
                calls.append(lambda embedded=embedded: compute.remote(embedded, max_pixels, hog_model))
            names.append(name)
        unreadable = []
        with progress_bar("HOG view", len(calls), unit="parts") as advance:
            for index, result in run_tasks(ray, calls, wait_s):
                if isinstance(result, pa.Table):
                    write_part(view, result, name=names[index])
                else:
                    unreadable.append(result)
                advance(1)
        if unreadable:
            # Without a HOG vector for every row the view cannot pair with the embedding: its index goes (the
            # parts made stay, for the next run), and cluster-shards clusters the embedding alone, as
            # 'pixclust cluster' does when HOG could not read an image.
            view.remove_file(f"{EMBEDDING_PARTS_DIR}/{PARTS_INDEX}")
            warn(
                f"no HOG view is kept in {view.root}: {unreadable[0]} could not be read a second time; "
                "cluster-shards clusters the embedding alone (run embed-shards again once it reads)"
            )
            return False
        commit_index(
            view,
            parts,
            {
                "model": hog_model,
                "model_id": extractor.model_id,
                "model_record": replace(extractor.record, model_id=extractor.model_id).to_dict(),
                "dim": extractor.dim,
            },
        )
        remove_unindexed(view, {name for name, _ in parts})
    return True


def hog_rows(embedded_part: str, max_pixels: int, hog_model: str = HOG_MODEL) -> pa.Table | str:
    """The HOG part mirroring the embedding part ``embedded_part``: its rows, in order, with HOG vectors made
    from the files they name (run in a Ray task). A file that cannot be decoded now gives its path and why."""
    try:
        with pq.ParquetFile(embedded_part) as parquet:
            table = parquet.read(columns=[name for name in parquet.schema_arrow.names if name != VECTOR_COLUMN])
    except (OSError, pa.ArrowException) as error:
        raise UsageError(f"{embedded_part} changed or cannot be read ({error}); run the same command again") from None
    extractor = load_extractor(hog_model)
    paths = [unescape_name(path) for path in table.column("path").to_pylist()]
    vectors = np.empty((len(paths), extractor.dim), np.float32)
    for batch in Embedder(extractor, batch_size=_HOG_BATCH, num_workers=0, max_pixels=max_pixels).iter_batches(paths):
        if batch.failures:
            row, error = batch.failures[0]
            return f"{paths[row]} ({error})"
        vectors[batch.indices] = batch.vectors
    model_ids = pa.array([extractor.model_id] * table.num_rows, pa.string())
    table = table.set_column(table.schema.get_field_index("model_id"), "model_id", model_ids)
    return with_vectors(table, vectors)


def hog_parts_of(embeddings: str | Path) -> Path | None:
    """The HOG parts that pair with the embedding parts ``embeddings`` names (an embed-shards run folder or its
    ``embeddings.parts/``); None when the run has no HOG view. A view that no longer mirrors the embedding's
    parts (a run stopped between the two indexes) is a one-line error."""
    embeddings = Path(os.path.abspath(embeddings))
    run_dir = embeddings if os.path.isfile(parts_dir(embeddings) / PARTS_INDEX) else embeddings.parent
    view = parts_dir(hog_folder(run_dir))
    if not has_parts_index(view):
        return None
    ours, theirs = read_index(parts_dir(run_dir)), read_index(view)
    if ours is None or theirs is None or ours["parts"] != theirs["parts"]:
        raise UsageError(
            f"the HOG view in {hog_folder(run_dir)} does not match the embeddings beside it (an embed-shards run "
            f"stopped between them); run 'pixclust embed-shards' into {run_dir} again"
        )
    return view
