"""``add``: new images into a finished run, placed in its clusters without clustering again.

The run's ``cluster_model.npz`` (written by every ``pixclust cluster``) places
each new image as the run would have: same model, same views (HOG too when
the run joined it), same PCA, the refinement's own head. An image far from
every member of the cluster it lands in (``placement.ClusterModel``) is
*novel*: cluster ``_new``, folder ``clusters/_new/``. Images whose bytes the
run already holds are reported, not added twice; copies of the run's images
among the new ones are listed in ``added_duplicates.csv``.

Everything is written as ``cluster`` writes it: under the run folder's lock,
atomically, the store extended with the new rows (new vectors are saved in
shards as they are made, so an interrupted ``add`` resumes), ``clusters.csv``
with two more columns (``novel``; ``added``, the batch), the cluster folders
swapped in whole, ``run.json`` with the batch, and the report rebuilt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.clustering.placement import NOVELTY_FALSE_ALARMS, ClusterModel, Placement
from pixclust.clustering.views import EMBEDDING_VIEW, HOG_VIEW, handmade_views
from pixclust.curation.duplicates import DuplicateReport
from pixclust.curation.export import (
    NOVEL_CLUSTER,
    NOVEL_LABEL,
    csv_text,
    export_folders,
    read_clusters_csv,
    read_errors_csv,
    write_errors_csv,
)
from pixclust.curation.flags import DEFAULT_FLAG_THRESHOLD, flag_images
from pixclust.curation.move import check_moves_finished, check_no_moves
from pixclust.embedding.extraction import embed
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.models import hog_model_for
from pixclust.embedding.record import ModelRecord
from pixclust.embedding.store import EmbeddingStore
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.names import from_cell
from pixclust.progress import quietly
from pixclust.report import build_report
from pixclust.report.caches import duplicates_with_added
from pixclust.runs.folder import (
    ADDED_DUPLICATES_CSV,
    CLUSTER_MODEL_FILE,
    CLUSTERS_CSV,
    CLUSTERS_DIR,
    EMBEDDINGS_FILE,
    ERRORS_CSV,
    RUN_JSON,
    VIEWS_DIR,
    RunFolder,
    not_a_finished_run,
)
from pixclust.runs.record import RunRecord

# Novel images, as a share of a batch, from which the terminal and the report suggest clustering again.
RECLUSTER_SHARE = 0.2
_ADDED_COLUMNS = ("novel", "added")
# clusters.csv's cells of free text, written by names.to_cell.
_TEXT_COLUMNS = ("path", "name")


@dataclass
class AddResult:
    """What ``add`` did: the batch name, the images added (in order) with their clusters
    (``NOVEL_CLUSTER`` for novel ones) and placements, the images the run already held (new path, the
    run's path with the same bytes), copies of images among the added (added path, the other's path,
    kind), files that could not be used, and timings."""

    run_dir: Path
    batch: str
    paths: list[str]
    clusters: list[str]
    placement: Placement
    already: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    n_extracted: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_novel(self) -> int:
        return int(np.sum(self.placement.novel))

    @property
    def suggest_reclustering(self) -> bool:
        """Whether so many images fit no cluster that clustering everything again would serve better."""
        return bool(self.paths) and self.n_novel >= RECLUSTER_SHARE * len(self.paths)


def add(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    *,
    report: bool | None = None,
    false_alarms: float = NOVELTY_FALSE_ALARMS,
    num_workers: int | None = None,
    quiet: bool = False,
) -> AddResult:
    """Embed the images in ``paths`` (files or folders) with the run's model and place them in its clusters.

    ``report`` rebuilds report.html (default: when the run made one). ``false_alarms`` is the share of
    images like a cluster's own that would be called novel (``ClusterModel.radii``).
    """
    if not paths:
        raise UsageError("give the new images to add: image files or folders of them")
    with quietly(quiet):
        run_dir = Path(run_dir)
        _check_addable(run_dir)
        for path in paths:
            folder = RunFolder.open_apart_from(path, run_dir)
        with folder.writing():
            check_moves_finished(folder)
            if any(name.startswith(f"{CLUSTERS_DIR}/") for name in folder.moved_originals()):
                raise UsageError(
                    f"the images of {run_dir} were moved into its {CLUSTERS_DIR}/ (--move), and add places new "
                    f"images by links beside them, which it cannot do there yet; put them back first "
                    f"(pixclust restore {run_dir}) and cluster without --move"
                )
            check_no_moves(folder)
            folder.check_replaceable(CLUSTERS_DIR)
            return _add_in(folder, [os.path.abspath(path) for path in paths], report, false_alarms, num_workers)


def _check_addable(run_dir: Path) -> None:
    """A run folder this pixclust can add to, or one line saying why not and what to do."""
    if not (run_dir / RUN_JSON).is_file() or not (run_dir / EMBEDDINGS_FILE).is_file():
        raise UsageError(not_a_finished_run(run_dir, "add"))
    if not (run_dir / CLUSTER_MODEL_FILE).is_file():
        source = RunRecord.read(run_dir / RUN_JSON).source or "FOLDER"
        raise UsageError(
            f"{run_dir} keeps no cluster model to place new images with (an older pixclust made it, or its "
            f"clustering left every image as noise); run 'pixclust cluster {source} --out {run_dir}' once "
            "(its stored vectors are reused), then add"
        )


def _add_in(
    folder: RunFolder, sources: list[str], report: bool | None, false_alarms: float, num_workers: int | None
) -> AddResult:
    run_dir = folder.root
    timings: dict[str, float] = {}
    started = time.perf_counter()
    record = RunRecord.read(run_dir / RUN_JSON)
    model = ClusterModel.load(run_dir / CLUSTER_MODEL_FILE)
    model.radii(false_alarms)  # a share out of range is refused before the embedding, not after
    store = EmbeddingStore(run_dir)
    table = read_clusters_csv(run_dir / CLUSTERS_CSV)
    # The run is what clusters.csv lists: an add killed after extending the store but before clusters.csv
    # left rows there that are not in the run yet, and the next add places them.
    run = stored_rows(store.load(), list(table), run_dir)
    model_record = ModelRecord.from_dict(record.model)
    config = record.config
    read_options = {
        "num_workers": num_workers,
        "batch_size": config.get("batch_size"),
        "max_pixels": config.get("max_pixels"),
        "include_hidden": config.get("include_hidden"),
    }
    read_options = {name: value for name, value in read_options.items() if value is not None}
    new = embed(
        sources,
        model=model_record.model,
        weights=model_record.weights.weights_option(),
        out=run_dir,
        save=False,
        **read_options,
    )
    if new.model_id != run.model_id:
        raise UsageError(
            f"model {model_record.model} now gives model id {new.model_id}, not the run's {run.model_id} "
            "(weights or preprocessing changed); cluster the run again before adding to it"
        )
    fresh, already = _new_rows(run, new)
    # The run's own HOG model, so that new rows join its store; runs before run.json named it kept plain HOG.
    hog_model = record.model.get("hog_model") or hog_model_for(model_record.model or "")
    hog_view = (run_dir / VIEWS_DIR / HOG_VIEW, hog_model)
    fresh, hog, skipped = _with_views(fresh, model, new.skipped, hog_view, read_options)
    timings["embed_s"] = time.perf_counter() - started
    views = {EMBEDDING_VIEW: fresh.vectors} | ({} if hog is None else handmade_views(hog.vectors))
    started = time.perf_counter()
    placement = model.place(views, false_alarms=false_alarms) if len(fresh) else _no_placement(model)
    timings["place_s"] = time.perf_counter() - started

    batch = f"batch_{len({row.get('added') for row in table.values()} - {None, ''}) + 1:02d}"
    names = _names_by_label(table)
    clusters = [
        NOVEL_CLUSTER if novel else names.get(int(label), f"cluster_{int(label):02d}")
        for label, novel in zip(placement.labels, placement.novel, strict=True)
    ]
    started = time.perf_counter()
    combined = run.followed_by(fresh)
    combined.model = replace(model_record, model_id=combined.model_id)
    duplicates = (
        _copies_among_added(duplicates_with_added(run_dir, run.model_id, combined, len(run)), combined.paths, len(run))
        if len(fresh)
        else []
    )
    timings["duplicates_s"] = time.perf_counter() - started

    started = time.perf_counter()
    store.save(combined)
    if hog is not None:
        hog_store = EmbeddingStore(run_dir / VIEWS_DIR / HOG_VIEW)
        hog_store.save(stored_rows(hog_store.load(), run.paths, run_dir).followed_by(hog))
    flags = _flags_of_added(combined, table, placement, config.get("flag_threshold", DEFAULT_FLAG_THRESHOLD))
    _write_clusters_csv(run_dir / CLUSTERS_CSV, table, fresh.paths, clusters, placement, batch, flags)
    _write_added_duplicates(run_dir / ADDED_DUPLICATES_CSV, duplicates)
    if skipped:
        write_errors_csv(run_dir / ERRORS_CSV, read_errors_csv(run_dir / ERRORS_CSV) + skipped)
    all_clusters = [row["cluster"] for row in table.values()] + clusters
    export_folders(folder, combined.paths, all_clusters, copy=bool(config.get("copy")))
    timings["export_s"] = time.perf_counter() - started
    result = AddResult(
        run_dir,
        batch,
        fresh.paths,
        clusters,
        placement,
        already,
        duplicates,
        skipped,
        new.n_extracted,
        timings,
    )
    if len(fresh):
        record = record.with_batch(
            {
                "batch": batch,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "sources": sources,
                "added": len(fresh),
                "novel": result.n_novel,
                "already_in_run": len(already),
                "copies_of_run_images": len(duplicates),
                "files_skipped": len(skipped),
            }
        )
    if report if report is not None else config.get("report", True):
        started = time.perf_counter()
        build_report(run_dir, maps=config.get("maps"), record=record, embeddings=combined)
        timings["report_s"] = time.perf_counter() - started
    record.write(run_dir / RUN_JSON)
    return result


def _with_views(
    fresh: Embeddings,
    model: ClusterModel,
    skipped: list[SkippedFile],
    hog_view: tuple[Path, str],
    read_options: dict[str, object],
) -> tuple[Embeddings, Embeddings | None, list[SkippedFile]]:
    """The new rows with every view the model needs: (rows, their HOG vectors or None, files not usable).

    ``hog_view`` is the run's HOG store and the model that made it.

    HOG goes into the run's ``views/hog/`` store as shards (saved with the run's rows later); an
    image whose HOG cannot be made is left out and listed.
    """
    skipped = list(skipped)
    if HOG_VIEW not in model.views or not len(fresh):
        return fresh, None, skipped
    hog_dir, hog_model = hog_view
    hog = embed(fresh.paths, model=hog_model, out=hog_dir, save=False, **read_options)
    row_of = {path: row for row, path in enumerate(hog.paths)}
    wanted = set(fresh.paths)
    skipped += [item for item in hog.skipped if item.path in wanted]
    fresh = fresh.take(np.asarray([row for row, path in enumerate(fresh.paths) if path in row_of], dtype=np.int64))
    return fresh, hog.take(np.asarray([row_of[path] for path in fresh.paths], dtype=np.int64)), skipped


def _new_rows(run: Embeddings, new: Embeddings) -> tuple[Embeddings, list[tuple[str, str]]]:
    """The rows of ``new`` whose bytes the run does not hold yet (each content once), and
    (path, the run's path with the same content) for the others."""
    path_of_hash = dict(zip(run.content_hashes, run.paths, strict=True))
    fresh_rows, already = [], []
    for row, (path, digest) in enumerate(zip(new.paths, new.content_hashes, strict=True)):
        if digest in path_of_hash:
            already.append((path, path_of_hash[digest]))
        else:
            path_of_hash[digest] = path
            fresh_rows.append(row)
    return new.take(np.asarray(fresh_rows, dtype=np.int64)), already


def _no_placement(model: ClusterModel) -> Placement:
    empty = np.empty(0)
    return Placement(empty.astype(np.int64), empty, empty, empty.astype(bool), np.empty((0, model.centres.shape[1])))


def _copies_among_added(report: DuplicateReport, paths: Sequence[str], first_added: int) -> list[tuple[str, str, str]]:
    """(added image, the image it copies: its group's keeper, or another member for the keeper, kind) per added
    image in a duplicate group."""
    copies = []
    for group in report.groups:
        for member, kind in zip(group.rows, group.kinds, strict=True):
            if member >= first_added:
                other = group.keeper if member != group.keeper else next(row for row in group.rows if row != member)
                copies.append((paths[member], paths[other], group.kind if kind == "keeper" else kind))
    return copies


def stored_rows(stored: Embeddings, paths: Sequence[str], run_dir: Path) -> Embeddings:
    """The stored rows of ``paths``, in that order; one line when the store lacks one."""
    if list(paths) == stored.paths:
        return stored
    row_of = {path: row for row, path in enumerate(stored.paths)}
    missing = [path for path in paths if path not in row_of]
    if missing:
        raise UsageError(
            f"{run_dir} stores no vector for {missing[0]}, which clusters.csv lists; cluster the run again "
            "before adding to it"
        )
    return stored.take(np.asarray([row_of[path] for path in paths], dtype=np.int64))


def _flags_of_added(
    combined: Embeddings, table: dict[str, dict[str, str]], placement: Placement, threshold: float
) -> list[tuple[str, str]]:
    """The added images' quality flags, judged against the whole run and the clusters they joined.

    Not "outlier": a novel image is what an added outlier is, and the placement's
    distances are not measured like the clustering's.
    """
    run_labels = [int(row["cluster_id"]) for row in table.values()]
    added_labels = np.where(placement.novel, NOVEL_LABEL, placement.labels)
    labels = np.concatenate([np.array(run_labels, dtype=np.int64), added_labels.astype(np.int64)])
    flags = flag_images(combined.image_stats, combined.image_sizes, labels, threshold=threshold)
    return flags.cells()[len(table) :]


def _names_by_label(table: dict[str, dict[str, str]]) -> dict[int, str]:
    return {int(row["cluster_id"]): row["cluster"] for row in table.values() if row["cluster"] != NOVEL_CLUSTER}


def _write_clusters_csv(
    path: Path,
    table: dict[str, dict[str, str]],
    paths: Sequence[str],
    clusters: Sequence[str],
    placement: Placement,
    batch: str,
    flags: Sequence[tuple[str, str]],
) -> None:
    """clusters.csv with the run's rows as they were and one row per added image; ``novel`` and ``added`` columns.

    A run from before quality flags and names gains the ``flags``, ``flag_score`` and ``name`` columns,
    empty for its own rows.
    """
    header = list(next(iter(table.values())).keys()) if table else []
    header += [column for column in ("flags", "flag_score", "name", *_ADDED_COLUMNS) if column not in header]
    # An added image shows what the cluster it joined shows.
    shows = {row["cluster"]: from_cell(row.get("name") or "") for row in table.values()}
    old_rows = [
        [from_cell(row.get(column) or "") if column in _TEXT_COLUMNS else (row.get(column) or "") for column in header]
        for row in table.values()
    ]
    for row in old_rows:
        if row[header.index("novel")] == "":
            row[header.index("novel")] = "false"
    new_rows = []
    for file, cluster, label, novel, distance, (x, y), (flagged, severity) in zip(
        paths,
        clusters,
        placement.labels,
        placement.novel,
        placement.distances,
        placement.coords[:, :2],
        flags,
        strict=True,
    ):
        values = {
            "path": file,
            "cluster": cluster,
            "cluster_id": NOVEL_LABEL if novel else int(label),
            "distance": f"{distance:.6f}",
            "silhouette": "",
            "x": f"{x:.6f}",
            "y": f"{y:.6f}",
            "name": "" if novel else shows.get(cluster, ""),
            "flags": flagged,
            "flag_score": severity,
            "novel": "true" if novel else "false",
            "added": batch,
        }
        new_rows.append([values.get(column, "") for column in header])
    write_text_atomic(path, csv_text(header, old_rows + new_rows, text=_TEXT_COLUMNS))


def _write_added_duplicates(path: Path, duplicates: Sequence[tuple[str, str, str]]) -> None:
    header = ("path", "copy_of", "kind")
    write_text_atomic(path, csv_text(header, duplicates, text=("path", "copy_of")))
