"""A run's groups in the formats annotation tools import: FiftyOne's classification dataset, COCO, plain CSV.

Each image carries its cluster (the category), what the cluster shows (its
name), its quality flags and, where the run's report found them, its
duplicate group. Images are never copied: every format points at the
originals by absolute path.

- ``fiftyone``: FiftyOne's ``FiftyOneImageClassificationDataset`` layout,
  ``labels.json`` (``{"classes": [...], "labels": {uuid: class index}}``) with a
  ``data.json`` manifest (``{uuid: image path}``) in place of a ``data/`` copy;
  ``fo.Dataset.from_dir(dir, fo.types.FiftyOneImageClassificationDataset)``
  reads it. Flags and duplicates are not part of that format; they are in
  ``pixclust.json`` beside it, by the same uuids.
- ``coco``: ``annotations.json`` with ``images`` (id, absolute ``file_name``,
  width, height), ``categories`` (one per cluster; ``supercategory`` holds its
  name) and one image-level ``annotation`` per image (no box: a cluster is
  about the whole picture), with ``attributes`` for flags and duplicates.
- ``csv``: ``export.csv``, one row per image, read back by :func:`read_export_csv`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.names import from_cell, write_csv

if TYPE_CHECKING:
    from pixclust.curation.duplicates import DuplicateReport
    from pixclust.report.run_view import RunView

EXPORT_FORMATS = ("fiftyone", "coco", "csv")
EXPORT_CSV = "export.csv"
COCO_JSON = "annotations.json"
FIFTYONE_LABELS = "labels.json"
FIFTYONE_DATA = "data.json"
FIFTYONE_EXTRA = "pixclust.json"
EXPORT_FILES = {
    "fiftyone": (FIFTYONE_LABELS, FIFTYONE_DATA, FIFTYONE_EXTRA),
    "coco": (COCO_JSON,),
    "csv": (EXPORT_CSV,),
}
_CSV_COLUMNS = ("path", "cluster", "name", "flags", "flag_score", "duplicate_group", "duplicate_kind")


@dataclass(frozen=True)
class ExportedImage:
    """One image as every format writes it; ``duplicate_group`` is None outside any group (or unknown)."""

    path: str
    cluster: str
    name: str
    flags: tuple[str, ...]
    flag_score: float
    duplicate_group: int | None
    duplicate_kind: str


def exported_images(view: RunView, duplicates: DuplicateReport | None) -> list[ExportedImage]:
    """The run's images in clusters.csv's terms; ``duplicates`` (a ``DuplicateReport``) may be None."""
    group_of: dict[int, tuple[int, str]] = {}
    for number, group in enumerate(duplicates.groups if duplicates is not None else (), start=1):
        kinds = group.kinds or tuple("keeper" if row == group.keeper else group.kind for row in group.rows)
        for row, kind in zip(group.rows, kinds, strict=True):
            group_of[row] = (number, kind)
    images = []
    for row, path in enumerate(view.paths):
        label = int(view.labels[row])
        group, kind = group_of.get(row, (None, ""))
        images.append(
            ExportedImage(
                path=str(Path(path).absolute()),
                cluster=view.cluster_of_label.get(label, str(label)),
                name=view.descriptions.get(label, ""),
                flags=tuple(view.flags[row]) if view.flags else (),
                flag_score=float(view.flag_scores[row]) if len(view.flag_scores) else float("nan"),
                duplicate_group=group,
                duplicate_kind=kind,
            )
        )
    return images


def _categories(images: Sequence[ExportedImage]) -> list[tuple[str, str]]:
    """(cluster, name) pairs in cluster order, each once."""
    return sorted({(image.cluster, image.name) for image in images})


def write_fiftyone(folder: Path, images: Sequence[ExportedImage]) -> list[Path]:
    categories = [cluster for cluster, _ in _categories(images)]
    index = {cluster: number for number, cluster in enumerate(categories)}
    uuids = [f"{number:08d}" for number in range(len(images))]
    labels = {
        "classes": categories,
        "labels": {uuid: index[image.cluster] for uuid, image in zip(uuids, images, strict=True)},
    }
    data = {uuid: image.path for uuid, image in zip(uuids, images, strict=True)}
    extra = {
        uuid: {
            "name": image.name,
            "flags": list(image.flags),
            "flag_score": _number(image.flag_score),
            "duplicate_group": image.duplicate_group,
            "duplicate_kind": image.duplicate_kind,
        }
        for uuid, image in zip(uuids, images, strict=True)
    }
    written = []
    for name, content in ((FIFTYONE_LABELS, labels), (FIFTYONE_DATA, data), (FIFTYONE_EXTRA, extra)):
        write_text_atomic(folder / name, json.dumps(content, indent=1))
        written.append(folder / name)
    return written


def write_coco(folder: Path, images: Sequence[ExportedImage]) -> Path:
    categories = _categories(images)
    category_id = {cluster: number for number, (cluster, _) in enumerate(categories, start=1)}
    entries, annotations = [], []
    for number, image in enumerate(images, start=1):
        width, height = _size(image.path)
        entries.append({"id": number, "file_name": image.path, "width": width, "height": height})
        annotations.append(
            {
                "id": number,
                "image_id": number,
                "category_id": category_id[image.cluster],
                "attributes": {
                    "flags": list(image.flags),
                    "flag_score": _number(image.flag_score),
                    "duplicate_group": image.duplicate_group,
                    "duplicate_kind": image.duplicate_kind,
                },
            }
        )
    document = {
        "info": {"description": "clusters exported by pixclust", "version": "1"},
        "images": entries,
        "categories": [
            {"id": category_id[cluster], "name": cluster, "supercategory": name} for cluster, name in categories
        ],
        "annotations": annotations,
    }
    target = folder / COCO_JSON
    write_text_atomic(target, json.dumps(document, indent=1))
    return target


def write_export_csv(folder: Path, images: Sequence[ExportedImage]) -> Path:
    rows = (
        (
            image.path,
            image.cluster,
            image.name,
            ";".join(image.flags),
            "" if np.isnan(image.flag_score) else f"{image.flag_score:.3f}",
            "" if image.duplicate_group is None else str(image.duplicate_group),
            image.duplicate_kind,
        )
        for image in images
    )
    return write_csv(folder / EXPORT_CSV, _CSV_COLUMNS, rows, text=("path", "cluster", "name"))


def read_export_csv(path: str | Path) -> list[ExportedImage]:
    """What :func:`write_export_csv` wrote (any cell a spreadsheet could read as a formula comes back as it was)."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [
            ExportedImage(
                path=from_cell(row["path"]),
                cluster=from_cell(row["cluster"]),
                name=from_cell(row["name"]),
                flags=tuple(filter(None, row["flags"].split(";"))),
                flag_score=float(row["flag_score"]) if row["flag_score"] else float("nan"),
                duplicate_group=int(row["duplicate_group"]) if row["duplicate_group"] else None,
                duplicate_kind=row["duplicate_kind"],
            )
            for row in csv.DictReader(stream)
        ]


def _refuse_other_files(folder: Path) -> None:
    """An export replaces only what an export writes: a folder holding anything else is someone's, not ours."""
    from pixclust.errors import UsageError
    from pixclust.runs.lock import LOCK_FILE
    from pixclust.runs.output_folder import OWNED_FILE

    ours = {*(name for names in EXPORT_FILES.values() for name in names), LOCK_FILE, OWNED_FILE}
    others = sorted(entry.name for entry in folder.iterdir() if entry.name not in ours) if folder.is_dir() else []
    if others:
        raise UsageError(
            f"--out {folder} holds files pixclust export did not write (first: {others[0]}); choose a new or empty folder"
        )


def _number(value: float) -> float | None:
    """JSON has no NaN: an unknown score is null."""
    return None if np.isnan(value) else round(float(value), 3)


def _size(path: str) -> tuple[int, int]:
    """Width and height from the image's header; 0 x 0 for a file that can no longer be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0, 0


@dataclass
class ExportRun:
    """What :func:`export_run` wrote: the files, how many images and clusters, how many in duplicate groups
    (``None`` when the run holds no duplicate groups: its report was never built)."""

    files: list[Path]
    n_images: int
    n_clusters: int
    n_duplicates: int | None


def export_run(run_dir: str | Path, *, format: str, out: str | Path) -> ExportRun:
    """Write the run's clusters, names, flags and duplicate groups into ``out`` as ``format`` (``EXPORT_FORMATS``)."""
    from pixclust.errors import UsageError
    from pixclust.report.caches import cached_duplicates
    from pixclust.report.run_view import load_run
    from pixclust.runs.folder import is_run_folder
    from pixclust.runs.output_folder import writing_into

    if format not in EXPORT_FORMATS:
        raise UsageError(f"--format {format!r} is not known; choose {', '.join(EXPORT_FORMATS)}")
    folder = Path(out)
    if is_run_folder(folder):
        raise UsageError(
            f"--out {folder} is a run folder, which holds only what pixclust makes there; choose another --out"
        )
    _refuse_other_files(folder)
    view = load_run(run_dir)
    duplicates = cached_duplicates(view.run_dir, view.record.model_id, view.embeddings)
    images = exported_images(view, duplicates)
    writers = {"fiftyone": write_fiftyone, "coco": write_coco, "csv": write_export_csv}
    with writing_into(folder, "export") as owned:
        owned.check_replaceable(folder / name for name in EXPORT_FILES[format])
        written = writers[format](folder, images)
        files = written if isinstance(written, list) else [written]
        owned.record(files)
    return ExportRun(
        files=files,
        n_images=len(images),
        n_clusters=len({image.cluster for image in images}),
        n_duplicates=None if duplicates is None else sum(image.duplicate_group is not None for image in images),
    )
