"""``apply``: carry a person's corrections (an edits.json) out on a finished run, and keep them.

The edits are checked against the run first (its id, every path and cluster they
name); anything wrong is one line and nothing is written. Then, under the run
folder's lock, each write atomic: the corrections are added to the run's
``corrections.json`` (so ``cluster`` and ``add`` keep them), ``clusters.csv`` is
rewritten (the ``cluster`` column and its ids; the automatic description stays
in ``name``), the cluster model is refitted to the corrected clusters (so ``add``
places new images in them), the cluster folders are swapped in whole, the
report is rebuilt and run.json records the edit. Applying the same file again
changes nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.clustering.clusterer import ClusterResult
from pixclust.clustering.placement import ClusterModel
from pixclust.clustering.views import EMBEDDING_VIEW, HOG_VIEW, handmade_views
from pixclust.curation.corrections import Corrections, apply_edits, cluster_ids, correct
from pixclust.curation.edits import EXCLUDED_CLUSTER, check_run, read_edits, run_identity
from pixclust.curation.export import csv_text, export_folders, number_cell, read_clusters_csv
from pixclust.curation.move import check_moves_finished, check_no_moves, move_into_clusters, restore_moves
from pixclust.embedding.store import EmbeddingStore
from pixclust.errors import UsageError
from pixclust.names import from_cell
from pixclust.progress import quietly
from pixclust.report import build_report
from pixclust.runs.add import stored_rows
from pixclust.runs.folder import (
    CLUSTER_MODEL_FILE,
    CLUSTERS_CSV,
    CLUSTERS_DIR,
    CORRECTIONS_FILE,
    REPORT_FILE,
    RUN_JSON,
    VIEWS_DIR,
    RunFolder,
    not_a_finished_run,
)
from pixclust.runs.record import RunRecord

_TEXT_COLUMNS = ("path", "name")


@dataclass
class ApplyResult:
    """What ``apply`` did: the run, the edits file, how many images changed cluster (by a move, a mark or a pin),
    how many clusters were renamed or merged away, the clusters now, and whether the file had been applied already."""

    run_dir: Path
    edits_file: Path
    images_moved: int
    renamed: int
    merged: int
    clusters: dict[str, int]
    already_applied: bool = False


def apply(
    run_dir: str | Path, edits_file: str | Path, *, report: bool | None = None, quiet: bool = False
) -> ApplyResult:
    """Carry out the edits in ``edits_file`` on the run folder ``run_dir``; ``report`` rebuilds report.html
    (default: when the run made one)."""
    run_dir, edits_file = Path(run_dir), Path(edits_file)
    with quietly(quiet):
        if not (run_dir / RUN_JSON).is_file() or not (run_dir / CLUSTERS_CSV).is_file():
            raise UsageError(not_a_finished_run(run_dir, "apply"))
        folder = RunFolder.open(run_dir, create=False)
        with folder.writing():
            journal = check_moves_finished(folder)
            moved_in = any(name.startswith(f"{CLUSTERS_DIR}/") for name in folder.moved_originals())
            if moved_in:
                # Checked before anything is written: the images go back and move again under this journal.
                if journal is None or not journal.sealed:
                    raise UsageError(
                        f"the images of {run_dir} were moved in by a journal that is gone or without your seal (another "
                        f"user, machine or an older pixclust); put them back first: pixclust restore {run_dir} "
                        "--trust-journal"
                    )
            else:
                check_no_moves(folder)
                folder.check_replaceable(CLUSTERS_DIR)
            return _apply_in(folder, edits_file, report, moved_in=moved_in)


def _apply_in(folder: RunFolder, edits_file: Path, report: bool | None, *, moved_in: bool) -> ApplyResult:
    run_dir = folder.root
    record = RunRecord.read(run_dir / RUN_JSON)
    edits, digest = read_edits(edits_file)
    csv_bytes = (run_dir / CLUSTERS_CSV).read_bytes()
    identity = run_identity(record.run_id, csv_bytes)
    table = read_clusters_csv(run_dir / CLUSTERS_CSV)
    paths = list(table)
    before = [row["cluster"] for row in table.values()]
    rebuild = report if report is not None else record.config.get("report", True)
    if edits.is_empty or any(
        entry.get("digest") == digest and entry.get("after") == identity for entry in record.edits
    ):
        if rebuild and not _report_shows(run_dir, identity):
            # An apply cut short after clusters.csv: the report is all it left to do.
            build_report(run_dir, maps=record.config.get("maps"), record=record)
        return ApplyResult(run_dir, edits_file, 0, 0, 0, dict(Counter(before)), already_applied=not edits.is_empty)
    check_run(edits, identity, str(edits_file))
    embeddings = stored_rows(EmbeddingStore(run_dir).load(), paths, run_dir)
    distances = np.array([number_cell(row["distance"]) for row in table.values()])
    after, left, corrections = apply_edits(
        paths, before, distances, edits, vectors=embeddings.vectors, source=record.source
    )
    labels, _ = cluster_ids(after, [int(row["cluster_id"]) for row in table.values()])
    new_csv = _clusters_csv_text(table, after, labels, left)
    result = ApplyResult(
        run_dir,
        edits_file,
        images_moved=sum(left),
        renamed=len(edits.rename),
        merged=sum(len(set(group)) - 1 for group in edits.merge),
        clusters=dict(Counter(after)),
    )
    # An apply killed between run.json and clusters.csv left this edit in the history once already.
    earlier = [entry for entry in record.edits if (entry.get("digest"), entry.get("before")) != (digest, identity)]
    record = replace(record, edits=earlier).with_edit(
        {
            "applied": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "file": os.path.abspath(edits_file),
            "digest": digest,
            "before": identity,
            "after": run_identity(record.run_id, new_csv.encode("utf-8")),
            "images_moved": result.images_moved,
            "renamed": result.renamed,
            "merged": result.merged,
        }
    )
    # clusters.csv is the run's state, so it is written after everything derived from the edits and before the
    # report, which reads it: an apply killed before it is redone in full by the same command, one killed after
    # it finds its edit in run.json and rebuilds only the report.
    Corrections.read(run_dir / CORRECTIONS_FILE).followed_by(corrections).write(run_dir / CORRECTIONS_FILE)
    _refit_model(folder, embeddings.vectors, paths, labels, record.config.get("seed", 0))
    if not moved_in:
        export_folders(folder, paths, after, copy=bool(record.config.get("copy")))
    record.write(run_dir / RUN_JSON)
    write_text_atomic(run_dir / CLUSTERS_CSV, new_csv)
    if rebuild:
        build_report(run_dir, maps=record.config.get("maps"), record=record, embeddings=embeddings)
    if moved_in:
        # Last, as `cluster --move` moves last: every image back where it was, journalled, then into its new folder.
        restored = restore_moves(run_dir)
        if restored.left:
            move, why = restored.left[0]
            raise UsageError(
                f"{move.destination} could not go back to {move.source} ({why}); clusters.csv has the corrections, "
                f"and the images still in {CLUSTERS_DIR}/ stay there: sort that file out, then run: pixclust restore "
                f"{run_dir}, and apply again"
            )
        _move_in(folder, record, paths, after)
    return result


def _move_in(folder: RunFolder, record: RunRecord, paths: Sequence[str], clusters: Sequence[str]) -> None:
    """Move the images of a ``--move`` run into their clusters' folders again (an excluded one stays put)."""
    kept = [(path, cluster) for path, cluster in zip(paths, clusters, strict=True) if cluster != EXCLUDED_CLUSTER]
    labels, names = cluster_ids([cluster for _, cluster in kept], [0] * len(kept))
    move_into_clusters(
        folder,
        str(record.source),
        [path for path, _ in kept],
        labels,
        {label: name for name, label in names.items()},
    )


def _report_shows(run_dir: Path, identity: str) -> bool:
    """Whether the run's report was built from clusters.csv as it is (it names the run's id)."""
    try:
        return f'"run":"{identity}"'.encode() in (run_dir / REPORT_FILE).read_bytes()
    except OSError:
        return False


def _clusters_csv_text(
    table: dict[str, dict[str, str]], clusters: Sequence[str], labels: np.ndarray, left: Sequence[bool]
) -> str:
    """clusters.csv with each image's corrected cluster and id; an image that left its cluster has no distance to
    its new cluster's centre or silhouette measured, and shows what most of its new cluster shows."""
    header = list(next(iter(table.values())).keys())
    shows: dict[str, Counter[str]] = {}
    for row, cluster, moved in zip(table.values(), clusters, left, strict=True):
        if not moved:
            shows.setdefault(cluster, Counter())[from_cell(row.get("name") or "")] += 1
    lines = []
    for row, cluster, label, moved in zip(table.values(), clusters, labels, left, strict=True):
        values = {
            column: from_cell(row.get(column) or "") if column in _TEXT_COLUMNS else (row.get(column) or "")
            for column in header
        }
        values |= {"cluster": cluster, "cluster_id": str(int(label))}
        if moved:
            values |= {"distance": "", "silhouette": ""}
        if "name" in values:
            values["name"] = shows[cluster].most_common(1)[0][0] if cluster in shows and label >= 0 else ""
        lines.append([values[column] for column in header])
    return csv_text(header, lines, text=_TEXT_COLUMNS)


def _refit_model(folder: RunFolder, vectors: np.ndarray, paths: Sequence[str], labels: np.ndarray, seed: int) -> None:
    """The run's cluster model refitted to the corrected clusters, so that ``add`` places new images in them."""
    run_dir = folder.root
    model_file = run_dir / CLUSTER_MODEL_FILE
    if not model_file.is_file():
        return
    model = ClusterModel.load(model_file)
    views = {EMBEDDING_VIEW: vectors}
    if HOG_VIEW in model.space.views:
        hog = stored_rows(EmbeddingStore(run_dir / VIEWS_DIR / HOG_VIEW).load(), paths, run_dir)
        views |= handmade_views(hog.vectors)
    if labels.max() < 0:
        # Every image marked: no cluster is left to place new images in.
        folder.remove_managed_file(CLUSTER_MODEL_FILE)
        return
    model.refitted(views, labels, random_state=seed).save(model_file)


def keep_corrections(
    clustering: ClusterResult,
    corrections: Corrections,
    paths: Sequence[str],
    views: dict[str, np.ndarray],
    automatic: dict[int, str],
    *,
    random_state: int = 0,
) -> tuple[ClusterResult, dict[int, str]]:
    """A new clustering of a run with the run's kept corrections carried out, and each cluster id's name.

    ``automatic`` names the new clustering's ids as ``cluster`` would; ``views`` are the rows' embeddings (and
    HOG vectors, where the clustering joined them) for refitting the cluster model to the corrected clusters.
    """
    labels = clustering.labels
    clusters = correct(
        paths,
        [automatic[int(label)] for label in labels],
        clustering.distances,
        corrections,
        vectors=views[EMBEDDING_VIEW],
    )
    corrected, id_of = cluster_ids(clusters, labels.tolist())
    # An image left its cluster when it ends apart from most of the images it was clustered with.
    followed = {
        int(label): Counter(corrected[labels == label].tolist()).most_common(1)[0][0] for label in np.unique(labels)
    }
    left = corrected != np.array([followed[int(label)] for label in labels])
    model = clustering.model
    if model is not None:
        usable = all(view in views for view in model.space.views) and corrected.max() >= 0
        model = model.refitted(views, corrected, random_state=random_state) if usable else None
    kept = replace(
        clustering,
        labels=corrected,
        n_clusters=len({int(label) for label in corrected if label >= 0}),
        distances=np.where(left, np.nan, clustering.distances),
        silhouettes=np.where(left, np.nan, clustering.silhouettes),
        model=model,
    )
    return kept, {label: name for name, label in id_of.items()}
