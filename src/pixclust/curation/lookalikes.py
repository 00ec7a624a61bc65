"""Look-alikes and duplicates as the CLI's ``similar`` and ``duplicates`` give them: load, compute, write.

The computing is done by ``search`` (which writes nothing); the CSV tables,
contact sheets and linked groups are written here, into the folder the caller
names, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.curation.duplicates import DEFAULT_KEEP, DuplicateReport
from pixclust.curation.export import safe_file_name
from pixclust.curation.search import DEFAULT_TOP, Match
from pixclust.embedding.sources import embed_images, extractor_for, open_embeddings
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.names import write_csv
from pixclust.report.figures import SHEETS_DIR, write_contact_sheet

DUPLICATES_CSV = "duplicates.csv"
SIMILAR_CSV = "similar.csv"
DUPLICATE_LINKS_DIR = "duplicate_links"


def _queries(embeddings: Embeddings, queries: Sequence[str]) -> tuple[list[str], np.ndarray, list[int | None]]:
    """Query vectors: rows already in the embeddings by id/path, other paths embedded with the run's model."""
    from pixclust.curation.search import rows_of

    rows = rows_of(embeddings, queries)
    outside = [query for query, row in zip(queries, rows, strict=True) if row is None]
    embedded: dict[str, np.ndarray] = {}
    if outside:
        paths, vectors, skipped = embed_images(outside, extractor_for(embeddings.model))
        if skipped:
            raise UsageError(
                f"query {skipped[0].path} cannot be used ({skipped[0].reason}); give images or ids in --in"
            )
        embedded = dict(zip(paths, vectors, strict=True))
    names, vectors, excluded = [], [], []
    for query, row in zip(queries, rows, strict=True):
        if row is not None:
            names.append(query)
            vectors.append(embeddings.vectors[row])
            excluded.append(row)
        else:
            found = [
                (path, vector)
                for path, vector in embedded.items()
                if path == query or Path(path).is_relative_to(Path(query))
            ]
            names.extend(path for path, _ in found)
            vectors.extend(vector for _, vector in found)
            excluded.extend(None for _ in found)
    return names, np.array(vectors, np.float32).reshape(len(names), embeddings.dim), excluded


@dataclass
class SimilarResult:
    queries: list[str]
    answers: list[list[Match]]
    csv_path: Path | None
    sheets: list[Path]


def find_similar(
    source: str | Path | Embeddings,
    queries: Sequence[str],
    *,
    top: int = DEFAULT_TOP,
    min_similarity: float | None = None,
    ids: str | Path | None = None,
    out: str | Path | None = None,
) -> SimilarResult:
    """The ``top`` look-alikes of each query (an image file, a folder, or an id in ``source``); with ``out``, a CSV and a sheet per query."""
    from pixclust.curation.search import similar

    embeddings = open_embeddings(source, ids=ids)
    names, vectors, excluded = _queries(embeddings, queries)
    answers = similar(
        embeddings, vectors, query_names=names, top=top, min_similarity=min_similarity, exclude_rows=excluded
    )
    if out is None:
        return SimilarResult(names, answers, None, [])
    folder = Path(out)
    rows = ((m.query, m.rank, m.path, f"{m.similarity:.4f}") for answer in answers for m in answer)
    csv_path = write_csv(folder / SIMILAR_CSV, ("query", "rank", "path", "similarity"), rows, text=("query", "path"))
    sheets = []
    if embeddings.names_files:
        for number, (name, answer) in enumerate(zip(names, answers, strict=True)):
            sheet = folder / SHEETS_DIR / f"similar_{number:03d}_{safe_file_name(Path(name).stem)}.png"
            paths = ([name] if os.path.isfile(name) else []) + [m.path for m in answer]
            captions = (["query"] if os.path.isfile(name) else []) + [f"{m.rank}: {m.similarity:.3f}" for m in answer]
            sheets.append(write_contact_sheet(sheet, paths, captions))
    return SimilarResult(names, answers, csv_path, sheets)


@dataclass
class DuplicatesResult:
    report: DuplicateReport
    embeddings: Embeddings
    csv_path: Path | None
    links: Path | None


def find_duplicate_images(
    source: str | Path | Embeddings,
    *,
    threshold: float | None = None,
    colour: bool = True,
    keep: str = DEFAULT_KEEP,
    mirror: bool = False,
    ids: str | Path | None = None,
    out: str | Path | None = None,
    export: bool = False,
) -> DuplicatesResult:
    """Exact, near and partial duplicate groups (see :mod:`pixclust.curation.duplicates`); with ``out``,
    ``duplicates.csv`` and (``export``) a folder of links per group. ``threshold`` is the cosine a pair
    needs to be compared; ``colour=False`` counts recoloured copies as duplicates; ``keep`` picks each
    group's keeper (``KEEP_RULES`` of :mod:`pixclust.curation.duplicates`); ``mirror`` also finds copies
    flipped left to right."""
    from pixclust.curation.duplicates import find_duplicates

    embeddings = open_embeddings(source, ids=ids)
    report = find_duplicates(embeddings, threshold=threshold, colour=colour, keep=keep, mirror=mirror)
    if out is None:
        if export:
            raise UsageError("--export needs an output folder; give --out")
        return DuplicatesResult(report, embeddings, None, None)
    folder = Path(out)
    rows = (
        (
            number,
            kind,
            embeddings.paths[row],
            "yes" if row == group.keeper else "",
            *embeddings.image_sizes[row],
            evidence,
            f"{group.min_similarity:.4f}",
        )
        for number, group in enumerate(report.groups, start=1)
        for row, kind, evidence in zip(group.rows, group.kinds, group.evidence, strict=True)
    )
    header = ("group", "kind", "path", "keep", "width", "height", "evidence", "min_similarity")
    csv_path = write_csv(folder / DUPLICATES_CSV, header, rows, text=("kind", "path", "keep", "evidence"))
    links = None
    if export:
        from pixclust.curation.export import export_cluster_folders
        from pixclust.runs.folder import RunFolder

        if not embeddings.names_files:
            raise UsageError("--export links image files, and these embeddings name no files; drop --export")
        members = [row for group in report.groups for row in group.rows]
        # Numbered from 1 like the CSV, so group 3 is in clusters/cluster_03/.
        labels = np.array(
            [number for number, group in enumerate(report.groups, start=1) for _ in group.rows], dtype=np.int64
        )
        # The links get a run folder of their own, so a second --export replaces only what the first one made.
        with RunFolder.open(folder / DUPLICATE_LINKS_DIR).writing() as links_folder:
            links = export_cluster_folders(links_folder, [embeddings.paths[row] for row in members], labels)
    return DuplicatesResult(report, embeddings, csv_path, links)
