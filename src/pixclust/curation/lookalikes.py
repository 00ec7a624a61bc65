"""Look-alikes and duplicates as the CLI's ``similar`` and ``duplicates`` give them: load, compute, write.

The computing is done by ``search`` (which writes nothing); the CSV tables,
contact sheets and linked groups are written here, into the folder the caller
names, atomically.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.curation.duplicates import DEFAULT_KEEP, DuplicateReport, RowFacts
from pixclust.curation.export import safe_file_name, write_errors_csv
from pixclust.curation.move import MoveReport, move_copies_aside
from pixclust.curation.search import DEFAULT_TOP, Match
from pixclust.embedding.part_store import has_parts_index, parts_model
from pixclust.embedding.sources import embed_images, extractor_for, open_embeddings
from pixclust.embeddings import Embeddings
from pixclust.errors import NoImagesError, UsageError
from pixclust.names import escape_name, unescape_name, write_csv
from pixclust.report.figures import SHEETS_DIR, write_contact_sheet
from pixclust.runs.folder import DUPLICATES_CSV, ERRORS_CSV, RUN_JSON, RunFolder, is_run_folder
from pixclust.runs.output_folder import writing_into

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
    address: str | None = None,
    ray_wait: float | None = None,
) -> SimilarResult:
    """The ``top`` look-alikes of each query (an image file, a folder, or an id in ``source``); with ``out``, a CSV and a sheet per query.

    ``source`` may be the run folder of ``pixclust embed-shards``: its parts are then searched by Ray
    tasks (on the cluster at ``address``; ``ray_wait`` as for ``cluster_shards``) and the queries must be
    image files or folders.
    """
    from pixclust.curation.search import similar

    if isinstance(source, (str, Path)) and os.path.isdir(source) and has_parts_index(source):
        if ids is not None:
            raise UsageError("--ids names rows of an embeddings.npy, not of embedding parts; leave it out")
        names, answers = _similar_in_parts(source, queries, top, min_similarity, address, ray_wait)
        names_files = True
    else:
        if address is not None or ray_wait is not None:
            raise UsageError(
                "--address and --ray-wait are for the embedding parts of 'pixclust embed-shards'; leave them out"
            )
        embeddings = open_embeddings(source, ids=ids)
        names, vectors, excluded = _queries(embeddings, queries)
        answers = similar(
            embeddings, vectors, query_names=names, top=top, min_similarity=min_similarity, exclude_rows=excluded
        )
        names_files = embeddings.names_files
    if out is None:
        return SimilarResult(names, answers, None, [])
    with writing_into(out, "similar") as owned:
        folder = owned.root
        sheet_files = [
            folder / SHEETS_DIR / f"similar_{number:03d}_{safe_file_name(Path(name).stem)}.png"
            for number, name in enumerate(names)
        ]
        owned.check_replaceable([folder / SIMILAR_CSV, *(sheet_files if names_files else [])])
        rows = ((m.query, m.rank, m.path, f"{m.similarity:.4f}") for answer in answers for m in answer)
        csv_path = write_csv(
            folder / SIMILAR_CSV, ("query", "rank", "path", "similarity"), rows, text=("query", "path")
        )
        sheets = []
        if names_files:
            for sheet, name, answer in zip(sheet_files, names, answers, strict=True):
                paths = ([name] if os.path.isfile(name) else []) + [m.path for m in answer]
                captions = (["query"] if os.path.isfile(name) else []) + [
                    f"{m.rank}: {m.similarity:.3f}" for m in answer
                ]
                sheets.append(write_contact_sheet(sheet, paths, captions))
        owned.record([csv_path, *sheets])
    return SimilarResult(names, answers, csv_path, sheets)


def _similar_in_parts(
    source: str | Path,
    queries: Sequence[str],
    top: int,
    min_similarity: float | None,
    address: str | None,
    ray_wait: float | None,
) -> tuple[list[str], list[list[Match]]]:
    """Query images embedded with the model that made the parts, then every part searched on Ray."""
    from pixclust.distributed.parts import VectorParts
    from pixclust.distributed.similar import search_parts
    from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S
    from pixclust.embedding.engines.ray import ray_session

    data = VectorParts.plan(source)
    names, vectors, skipped = embed_images(queries, extractor_for(parts_model(source)))
    if skipped:
        raise UsageError(f"query {skipped[0].path} cannot be used ({skipped[0].reason}); give image files or folders")
    with ray_session(address) as ray:
        found = search_parts(
            data,
            vectors,
            top=top,
            exclude_paths=[escape_name(os.path.abspath(name)) for name in names],
            ray=ray,
            wait_s=DEFAULT_RAY_WAIT_S if ray_wait is None else ray_wait,
        )
    answers = []
    for name, matches in zip(names, found, strict=True):
        kept = [match for match in matches if min_similarity is None or match[2] >= min_similarity]
        answers.append(
            [
                Match(name, rank, row, unescape_name(path), similarity)
                for rank, (row, path, similarity) in enumerate(kept, start=1)
            ]
        )
    return names, answers


@dataclass
class DuplicatesResult:
    report: DuplicateReport
    embeddings: Embeddings
    csv_path: Path | None
    links: Path | None
    moves: MoveReport | None = None


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
    move_copies: str | Path | None = None,
) -> DuplicatesResult:
    """Exact, near and partial duplicate groups (see :mod:`pixclust.curation.duplicates`).

    ``source`` is a run folder, an ``embeddings.npy`` (with ``ids``), or a folder
    of images, embedded first (into ``out``'s store when given, so a later
    ``pixclust cluster`` of that folder into ``out`` embeds nothing again). With
    ``out`` (a run folder), ``duplicates.csv`` and (``export``) a folder of links
    per group. ``threshold`` is the cosine a pair needs to be compared;
    ``colour=False`` counts recoloured copies as duplicates; ``keep`` picks each
    group's keeper (``KEEP_RULES`` of :mod:`pixclust.curation.duplicates`);
    ``mirror`` also finds copies flipped left to right. ``move_copies`` (a run
    folder) receives every copy that is not its group's keeper, moved with the
    journal of :mod:`pixclust.curation.move`; ``pixclust restore`` puts them back.
    """
    from pixclust.curation.duplicates import find_duplicates

    if export and out is None:
        raise UsageError("--export needs an output folder; give --out")
    images = _image_folder(source)
    with contextlib.ExitStack() as held:
        out_folder = None if out is None else held.enter_context(_writable(images, out))
        copies_to = None
        if move_copies is not None and images is not None:
            # Checked and locked before the minutes of embedding.
            copies_to = held.enter_context(_copies_folder(images, move_copies))
        embeddings = _embeddings_of(source, images, ids, out_folder)
        if move_copies is not None and copies_to is None:
            copies_to = held.enter_context(_copies_folder(_stored_images_root(embeddings), move_copies))
        report = find_duplicates(embeddings, threshold=threshold, colour=colour, keep=keep, mirror=mirror)
        csv_path = links = moves = None
        if out_folder is not None:
            csv_path = write_duplicates_csv(out_folder.path(DUPLICATES_CSV), embeddings, report)
            if export:
                links = _link_groups(out_folder.path(DUPLICATE_LINKS_DIR), embeddings, report)
        if copies_to is not None:
            copies_folder, copies_from = copies_to
            copies = [
                (row, number)
                for number, group in enumerate(report.groups, start=1)
                for row in group.rows
                if row != group.keeper
            ]
            # An exact copy is known by the content stored with its vector, not read again: one changed since
            # is no longer known to be a copy, so it stays.
            unchanged = [_unchanged(embeddings, row) for row, _ in copies]
            current = [copy for copy, same in zip(copies, unchanged, strict=True) if same]
            moves = move_copies_aside(
                copies_folder, copies_from, [embeddings.paths[row] for row, _ in current], [n for _, n in current]
            )
            moves.kept += [
                (embeddings.paths[row], "it changed since it was embedded, so it stays; run the search again")
                for (row, _), same in zip(copies, unchanged, strict=True)
                if not same
            ]
    return DuplicatesResult(report, embeddings, csv_path, links, moves)


def _unchanged(embeddings: Embeddings, row: int) -> bool:
    """Whether the file at ``row``'s path has the size and modification time it had when it was embedded."""
    try:
        status = os.stat(embeddings.paths[row])
    except OSError:
        return False
    return status.st_size == embeddings.file_sizes[row] and status.st_mtime_ns == embeddings.mtimes_ns[row]


def _image_folder(source: str | Path | Embeddings) -> Path | None:
    """The folder of images ``source`` names, when it is one (not a run folder, not an .npy), else None."""
    if isinstance(source, Embeddings) or not os.path.isdir(source) or is_run_folder(source):
        return None
    return Path(source)


@contextlib.contextmanager
def _writable(images: Path | None, out: str | Path) -> Iterator[RunFolder]:
    from pixclust.curation.move import check_moves_finished

    folder = RunFolder.open(out) if images is None else RunFolder.open_apart_from(images, out)
    with folder.writing():
        check_moves_finished(folder)
        yield folder


@contextlib.contextmanager
def _copies_folder(images: Path, move_copies: str | Path) -> Iterator[tuple[RunFolder, Path]]:
    """The run folder the copies of images under ``images`` go to, checked and locked, and ``images``."""
    from pixclust.curation.move import check_no_moves

    folder = RunFolder.open_apart_from(images, move_copies)
    with folder.writing():
        check_no_moves(folder)
        yield folder, images


def _stored_images_root(embeddings: Embeddings) -> Path:
    """The deepest folder holding every image the embeddings name: no copy may move from outside it."""
    paths = [path for path in embeddings.paths if os.path.isabs(path)] if embeddings.names_files else []
    if not paths:
        raise UsageError(
            "--move-copies moves image files, and these embeddings name no folder of images; "
            "give the image folder or a run folder"
        )
    root = os.path.commonpath(paths)
    return Path(root if os.path.isdir(root) else os.path.dirname(root))


def _embeddings_of(
    source: str | Path | Embeddings, images: Path | None, ids: str | Path | None, out: RunFolder | None
) -> Embeddings:
    """The embeddings to search: those ``source`` holds, or the folder ``images`` embedded now (into ``out``'s store)."""
    if images is None:
        return open_embeddings(source, ids=ids)
    if ids is not None:
        raise UsageError(f"--ids is for an embeddings.npy file, not the image folder {images}; drop --ids")
    from pixclust.embedding.extraction import embed
    from pixclust.embedding.files import READABLE_FORMATS

    model, weights = _model_of_run(images, out)
    embeddings = embed(images, model=model, weights=weights, out=None if out is None else out.root)
    if out is not None:
        write_errors_csv(out.path(ERRORS_CSV), embeddings.skipped)
    if len(embeddings) == 0:
        raise NoImagesError(
            f"no usable images in {images}: {len(embeddings.skipped)} files skipped; "
            f"point pixclust at a folder of {READABLE_FORMATS} images"
        )
    return embeddings


def _model_of_run(images: Path, out: RunFolder | None) -> tuple[str, str | None]:
    """The model (and weights) of the run ``out`` already holds, so its vectors are reused; else the default."""
    from pixclust.embedding.models import DEFAULT_MODEL
    from pixclust.embedding.record import ModelRecord
    from pixclust.runs.record import RunRecord

    if out is None or not out.path(RUN_JSON).is_file():
        return DEFAULT_MODEL, None
    record = RunRecord.read(out.path(RUN_JSON))
    if record.source is None or os.path.realpath(record.source) != os.path.realpath(images):
        raise UsageError(
            f"{out.root} is the run of {record.source}, not of {images}; give that folder, or another --out"
        )
    model = ModelRecord.from_dict(record.model)
    return model.model or DEFAULT_MODEL, model.weights.weights_option()


def write_duplicates_csv(path: Path, facts: RowFacts, report: DuplicateReport) -> Path:
    """``duplicates.csv``: one line per image of each group, groups numbered from 1 as the report lists them."""
    rows = (
        (
            number,
            kind,
            facts.paths[row],
            "yes" if row == group.keeper else "",
            *facts.image_sizes[row],
            evidence,
            f"{group.min_similarity:.4f}",
        )
        for number, group in enumerate(report.groups, start=1)
        for row, kind, evidence in zip(group.rows, group.kinds, group.evidence, strict=True)
    )
    header = ("group", "kind", "path", "keep", "width", "height", "evidence", "min_similarity")
    return write_csv(path, header, rows, text=("kind", "path", "keep", "evidence"))


def _link_groups(links_dir: Path, embeddings: Embeddings, report: DuplicateReport) -> Path:
    """Group N's images linked into ``links_dir/clusters/cluster_N/``, a run folder of its own."""
    from pixclust.curation.export import export_cluster_folders

    if not embeddings.names_files:
        raise UsageError("--export links image files, and these embeddings name no files; drop --export")
    members = [row for group in report.groups for row in group.rows]
    # Numbered from 1 like the CSV, so group 3 is in clusters/cluster_03/.
    labels = np.array(
        [number for number, group in enumerate(report.groups, start=1) for _ in group.rows], dtype=np.int64
    )
    # The links get a run folder of their own, so a second --export replaces only what the first one made.
    with RunFolder.open(links_dir).writing() as links_folder:
        return export_cluster_folders(links_folder, [embeddings.paths[row] for row in members], labels)
