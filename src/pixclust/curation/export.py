"""Files a run leaves behind: tables, the run record, and one folder of links per cluster.

Everything here writes into the run folder only, and atomically: a table is
written beside its final name and renamed; the cluster folders are built
under a temporary name and swapped in whole. Source images are only ever
the target of a link or the source of a copy.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import stat
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.clustering.metrics import NOISE_LABEL
from pixclust.curation.edits import EXCLUDED_CLUSTER
from pixclust.embedding.files import SkippedFile
from pixclust.names import from_cell, text_cells
from pixclust.runs.folder import CLUSTERS_DIR, COPY, DIR, LINK, RunFolder

if TYPE_CHECKING:
    from pixclust.clustering.clusterer import ClusterResult

NOISE_NAME = "noise"
# clusters.csv's columns as `pixclust cluster` writes them (`pixclust add` appends its own after these).
CLUSTERS_COLUMNS = ("path", "cluster", "cluster_id", "distance", "silhouette", "x", "y", "flags", "flag_score", "name")
# Where `pixclust add` puts an image that fits none of the run's clusters: its cluster name and id.
NOVEL_CLUSTER = "_new"
NOVEL_LABEL = -1


def cluster_names(labels: np.ndarray, descriptions: dict[int, str] | None = None) -> dict[int, str]:
    """``cluster_00``, ``cluster_01``... (zero-padded so folders sort), ``noise`` for -1.

    With ``descriptions`` (``--name-folders``), a described cluster is named by its
    number and description instead, as a safe folder name: ``03_tabby_tiger-cat``.
    """
    ids = sorted({int(label) for label in labels})
    width = max(2, len(str(max(ids, default=0))))
    descriptions = descriptions or {}
    return {
        label: NOISE_NAME
        if label == NOISE_LABEL
        else f"{label:0{width}d}_{_slug(descriptions[label])}"
        if label in descriptions
        else f"cluster_{label:0{width}d}"
        for label in ids
    }


def _slug(description: str) -> str:
    words = "_".join(part.strip().replace(" ", "-") for part in description.split("/"))
    return safe_file_name(words).replace(" ", "-") or "unnamed"


@dataclass(frozen=True)
class ClusterRow:
    """One line of the summary table.

    ``duplication`` is the seeds' figure: the share of all images that would be
    redundant if one image per cluster were kept, i.e. (size - 1) / total.
    Summed over clusters it gives (N - k) / N, the seeds' overall figure.
    """

    name: str
    images: int
    share: float
    duplication: float
    description: str = ""


def cluster_summary(
    labels: np.ndarray, names: dict[int, str] | None = None, descriptions: dict[int, str] | None = None
) -> list[ClusterRow]:
    """One row per cluster (named by ``names``, by default ``cluster_names``), with its description where it has one."""
    names = names or cluster_names(labels)
    descriptions = descriptions or {}
    total = len(labels)
    rows = []
    for label, name in names.items():
        size = int(np.sum(labels == label))
        redundant = size if label == NOISE_LABEL else size - 1
        rows.append(ClusterRow(name, size, size / total, redundant / total, descriptions.get(label, "")))
    return rows


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], *, text: Collection[str]) -> str:
    """The table as CSV; cells of the ``text`` columns are written by :func:`pixclust.names.to_cell` (any name, never a formula)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(text_cells(header, rows, text))
    return buffer.getvalue()


def write_clusters_csv(
    path: Path,
    paths: Sequence[str],
    clustering: ClusterResult,
    flags: Sequence[tuple[str, str]],
    names: dict[int, str] | None = None,
    descriptions: dict[int, str] | None = None,
) -> None:
    """One row per image: path, cluster (``names``, by default ``cluster_names``) and id, distance to its centre,
    silhouette, 2-D map position, quality flags and their severity (``QualityFlags.cells``), and what the
    cluster shows (``descriptions``; empty where there is none)."""
    names = names or cluster_names(clustering.labels)
    descriptions = descriptions or {}
    rows = (
        (
            file,
            names[int(label)],
            int(label),
            _number(distance),
            _number(silhouette),
            f"{x:.6f}",
            f"{y:.6f}",
            *cells,
            descriptions.get(int(label), ""),
        )
        for file, label, distance, silhouette, (x, y), cells in zip(
            paths,
            clustering.labels,
            clustering.distances,
            clustering.silhouettes,
            clustering.coords_2d,
            flags,
            strict=True,
        )
    )
    write_text_atomic(path, csv_text(CLUSTERS_COLUMNS, rows, text=("path", "name")))


def read_clusters_csv(path: Path) -> dict[str, dict[str, str]]:
    """clusters.csv's rows by path (the other cells as written), in its order."""
    with open(path, newline="", encoding="utf-8") as stream:
        return {from_cell(row["path"]): row for row in csv.DictReader(stream)}


def number_cell(text: str) -> float:
    """A number clusters.csv holds; NaN where it holds none, or text that is not one (a hand-edited cell)."""
    try:
        return float(text) if text else float("nan")
    except ValueError:
        return float("nan")


def _number(value: float) -> str:
    """Six decimals, or empty where there is no value (noise, unscored)."""
    return "" if np.isnan(value) else f"{value:.6f}"


_ERROR_COLUMNS = ("path", "reason", "detail")


def write_errors_csv(path: Path, skipped: Sequence[SkippedFile]) -> None:
    """Every file that could not be used, with a short reason and the full detail."""
    rows = ((item.path, item.reason, item.detail) for item in skipped)
    write_text_atomic(path, csv_text(_ERROR_COLUMNS, rows, text=_ERROR_COLUMNS))


def read_errors_csv(path: Path) -> list[SkippedFile]:
    """The files ``write_errors_csv`` listed (none when there is no such file)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        return [SkippedFile(*(from_cell(row[name]) for name in _ERROR_COLUMNS)) for row in csv.DictReader(stream)]


_UNSAFE_NAME_CHARS = re.compile(r"[^\w.\- ]+")
# File systems allow 255 bytes per name; leave room for "~2" and for the prefixes and suffixes added around it.
_MAX_NAME_BYTES = 200
_MAX_EXTENSION_BYTES = 16


def safe_file_name(name: str) -> str:
    """A name that stays one entry inside its folder: no separators, no '..', no control characters, at most 200 bytes.

    A shortened name keeps its extension, so the file still opens with the right program.
    """
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).strip(" .") or "_"
    if len(cleaned.encode()) <= _MAX_NAME_BYTES:
        return cleaned
    stem, extension = os.path.splitext(cleaned)
    if len(extension.encode()) > _MAX_EXTENSION_BYTES:
        stem, extension = cleaned, ""
    kept = stem.encode()[: _MAX_NAME_BYTES - len(extension.encode())].decode(errors="ignore")
    return kept + extension


def export_cluster_folders(
    folder: RunFolder,
    paths: Sequence[str],
    labels: np.ndarray,
    *,
    copy: bool = False,
    names: dict[int, str] | None = None,
) -> Path:
    """Build ``clusters/<name>/`` with a link (or copy) of each image, named as ``cluster_entries`` says."""
    names = names or cluster_names(labels)
    return export_folders(folder, paths, [names[int(label)] for label in labels], copy=copy)


def export_folders(folder: RunFolder, paths: Sequence[str], clusters: Sequence[str], *, copy: bool = False) -> Path:
    """Build ``clusters/<cluster>/`` with a link (or copy) of each image in the folder ``clusters`` names for it
    (none for ``_excluded``).

    The folders are built in a staging folder and swapped in whole; the previous
    ``clusters/`` goes only if everything in it is pixclust's (the run folder checks).
    """
    folder.check_replaceable(CLUSTERS_DIR)
    # An image a person excluded (pixclust apply) belongs in no folder.
    kept = [(path, cluster) for path, cluster in zip(paths, clusters, strict=True) if cluster != EXCLUDED_CLUSTER]
    entries = folder_entries([path for path, _ in kept], [cluster for _, cluster in kept])
    earlier_copies = set(folder.files_under(CLUSTERS_DIR, COPY)) if copy else set()
    with folder.staging() as staging:
        for cluster in sorted({cluster for _, cluster, _ in entries}):
            (staging / cluster).mkdir()
        for file, cluster, entry in entries:
            target = staging / cluster / entry
            if copy:
                earlier = f"{CLUSTERS_DIR}/{cluster}/{entry}"
                _copy_or_reuse(file, target, folder.path(earlier) if earlier in earlier_copies else None)
            else:
                os.symlink(os.path.abspath(file), target)
        made = [(f"{CLUSTERS_DIR}/{cluster}", DIR) for cluster in sorted({cluster for _, cluster, _ in entries})]
        made += [(f"{CLUSTERS_DIR}/{cluster}/{entry}", COPY if copy else LINK) for _, cluster, entry in entries]
        folder.swap_in(staging, CLUSTERS_DIR, made)
    return folder.path(CLUSTERS_DIR)


def _copy_or_reuse(file: str, target: Path, earlier: Path | None) -> None:
    """Copy ``file`` to ``target``, or hard-link the copy an earlier export made of it (``earlier``).

    An add to a run made with --copy would otherwise copy every image again. The earlier copy
    is reused only while it is a regular file of the source's size and modification time (a
    copy keeps both), so a source changed since is copied afresh.
    """
    if earlier is not None:
        try:
            made, source = os.lstat(earlier), os.stat(file)
            if stat.S_ISREG(made.st_mode) and (made.st_size, made.st_mtime_ns) == (source.st_size, source.st_mtime_ns):
                os.link(earlier, target)
                return
        except OSError:
            # Gone, or a file system without hard links: copy.
            pass
    shutil.copy2(file, target)


def cluster_entries(
    paths: Sequence[str], labels: np.ndarray, names: dict[int, str] | None = None
) -> list[tuple[str, str, str]]:
    """(file, cluster folder, name inside it) per image, in path order, as :func:`folder_entries` names them."""
    names = names or cluster_names(labels)
    return folder_entries(paths, [names[int(label)] for label in labels])


def folder_entries(paths: Sequence[str], folders: Sequence[str]) -> list[tuple[str, str, str]]:
    """(file, folder, name inside it) per file, in path order.

    Names are ``safe_file_name`` of the file's own name; two files with the
    same name in one folder get distinct names (``photo.jpg``, ``photo~2.jpg``).
    """
    taken: dict[str, set[str]] = {folder: set() for folder in folders}
    entries = []
    for file, folder in sorted(zip(paths, folders, strict=True)):
        entries.append((file, folder, _unique_name(safe_file_name(os.path.basename(file)), taken[folder])))
    return entries


def _unique_name(name: str, taken: set[str]) -> str:
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}~{n}{suffix}"
    taken.add(candidate)
    return candidate
