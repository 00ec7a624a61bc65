"""``pixclust embed-shards``: embed images on Ray into a run folder's parts, never holding every vector.

Discovery and hashing run as for ``--engine ray`` (files opened and hashed by
Ray tasks); the images whose content no part holds go to the actors, and their
vectors are written as parts of about :data:`~pixclust.embedding.part_store.PART_WRITE_ROWS`
rows (whole batches) as they come back, so this process holds one part's vectors at a time. Then
the parts are fitted to the images found (:func:`~pixclust.embedding.part_store.plan_layout`):
a part whose files are all unchanged is kept, one that holds files gone or
changed, or whose content is now also at another path, is rewritten by a Ray task,
and the index naming the parts is replaced in one step. ``cluster-shards`` and
``duplicates-shards`` read the result.

Everything is written by this process under the folder's lock; a kill leaves the
previous index and its parts, and the parts written since, whose vectors the
next run reuses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import pyarrow as pa

from pixclust.curation.export import write_errors_csv
from pixclust.embedding.decode import DEFAULT_MAX_PIXELS
from pixclust.embedding.embedder import DEFAULT_BATCH_SIZE
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S
from pixclust.embedding.engines.ray import RayEmbedder, RaySettings, ray_session, run_tasks
from pixclust.embedding.extraction import discover_sources, extract_chunks, hash_files
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.files import READABLE_FORMATS, SkippedFile
from pixclust.embedding.ink_choice import InkChoice, check_ink, network_model, outline_wanted
from pixclust.embedding.models import DEFAULT_MODEL, hog_model_for, resolve_model
from pixclust.embedding.part_store import (
    PART_WRITE_ROWS,
    PartRows,
    Rewrite,
    commit_index,
    parts_dir,
    plan_layout,
    remove_unindexed,
    select_rows,
    stored_parts,
    with_files,
    write_part,
)
from pixclust.embedding.store import KnownEmbeddings, hashes_by_stat
from pixclust.embeddings import Embeddings
from pixclust.errors import NoImagesError
from pixclust.names import escape_name
from pixclust.progress import progress_bar, quietly
from pixclust.runs.folder import ERRORS_CSV, RunFolder
from pixclust.runs.sharded import refuse_local_run
from pixclust.runs.sharded_hog import drop_hog_view, hog_folder, make_hog_view

IDENTITY = ["path", "content_hash", "file_size", "mtime_ns"]


@dataclass(frozen=True)
class ShardedEmbedding:
    """What :func:`embed_shards` left in ``run_dir``: ``rows`` images in ``parts`` parts of ``dim``-long vectors of
    ``model_id``; ``n_extracted`` embedded now, ``n_reused`` not (stored, or an identical file's), ``parts_rewritten`` parts
    written anew for files gone, changed or copied; the files ``skipped`` and why; ``seconds`` in all; ``hog``:
    whether the run has its HOG view (``views/hog/``) for cluster-shards; ``ink``: the sample that decided whether
    the network got ink on paper as grey (None: not sampled)."""

    run_dir: Path
    rows: int
    parts: int
    dim: int
    model_id: str
    n_extracted: int
    n_reused: int
    parts_rewritten: int
    skipped: list[SkippedFile]
    seconds: float
    hog: bool
    ink: InkChoice | None = None

    @property
    def parts_dir(self) -> Path:
        return parts_dir(self.run_dir)

    @property
    def hog_dir(self) -> Path | None:
        return hog_folder(self.run_dir) if self.hog else None


def embed_shards(
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    include_hidden: bool = False,
    runtime: str = "auto",
    precision: str = "auto",
    address: str | None = None,
    actor_cpus: int | None = None,
    ray_wait: float = DEFAULT_RAY_WAIT_S,
    hog: bool = True,
    ink: str = "auto",
    quiet: bool = False,
) -> ShardedEmbedding:
    """Embed every usable image under ``source`` (folders or image files) on Ray into the run folder ``out``'s
    ``embeddings.parts/``, reusing the vectors its parts hold for the same bytes and model.

    ``address``, ``actor_cpus`` and ``ray_wait`` are as for ``pixclust.embed(..., engine="ray")``; the
    other settings are ``pixclust.embed``'s. Files that cannot be used are listed in ``errors.csv``.
    With ``hog`` (and a network for ``model``), the images' HOG vectors are kept beside the parts, row for
    row (:mod:`pixclust.runs.sharded_hog`), so that cluster-shards can join them as ``pixclust cluster`` does.
    ``ink`` is ``pixclust cluster``'s: with "auto", a sample of the images found decides whether a network
    gets pictures of ink on paper as grey ink on white (``model`` then ends in ``+ink``).
    """
    started = time.perf_counter()
    roots = [source] if isinstance(source, (str, Path)) else list(source)
    if not roots:
        raise NoImagesError("no images given; name a folder or file of images")
    check_ink(model, ink)
    for root in roots:
        folder = RunFolder.open_apart_from(root, out)
    refuse_local_run(folder, out)
    with quietly(quiet), ray_session(address) as ray, folder.writing():
        refuse_local_run(folder, out)
        discovery = discover_sources(roots, include_hidden, ray_wait)
        # Paths as text only: a Path object per image is several times the text's memory.
        found, skipped = [str(path) for path in discovery.files], list(discovery.skipped)
        del discovery
        model, ink_choice = network_model(model, ink, lambda walked=found: walked, max_pixels=max_pixels)
        extractor = load_extractor(model, weights=weights, runtime=runtime, precision=precision, lazy=True)
        parts = stored_parts(folder, extractor.model_id, extractor.dim)
        known = KnownEmbeddings()
        for part in parts:
            known.hash_by_stat.update(hashes_by_stat(part.rows))
        files, hashes, stats, unreadable = hash_files(found, known, ray_wait)
        del found, known
        skipped += unreadable
        stored = {digest for part in parts for digest in part.rows.column("content_hash").to_pylist()}
        stat_of = dict(zip(files, stats, strict=True))
        # Every path of each new content: identical files are written with their first one's vector.
        paths_of_hash: dict[str, list[str]] = {}
        for path, digest in zip(files, hashes, strict=True):
            if digest not in stored:
                paths_of_hash.setdefault(digest, []).append(path)
        fresh: list[PartRows] = []

        def save(chunk: Embeddings) -> None:
            table = _with_copies(chunk, paths_of_hash, stat_of)
            fresh.append(PartRows(write_part(folder, table), table.select(IDENTITY)))

        embedder = RayEmbedder(
            extractor,
            model=model,
            weights=weights,
            runtime=runtime,
            precision=precision,
            batch_size=batch_size,
            max_pixels=max_pixels,
            settings=RaySettings(address, actor_cpus, ray_wait),
        )
        failed = extract_chunks(
            embedder,
            [(digest, paths[0]) for digest, paths in paths_of_hash.items()],
            stat_of,
            extractor.model_id,
            extractor.dim,
            save,
            chunk_rows=PART_WRITE_ROWS,
        )
        current = []
        for path, digest, (size, mtime) in zip(files, hashes, stats, strict=True):
            if digest in failed:
                skipped.append(SkippedFile(path, failed[digest].reason, failed[digest].detail))
            else:
                current.append((escape_name(path), digest, size, mtime))
        folder.claim_files([ERRORS_CSV])
        write_errors_csv(folder.path(ERRORS_CSV), sorted(skipped, key=lambda item: item.path))
        if not current:
            raise NoImagesError(
                f"no usable images in {', '.join(str(root) for root in roots)}: {len(skipped)} files skipped "
                f"(reasons in {folder.path(ERRORS_CSV)}); point pixclust at a folder of {READABLE_FORMATS} images"
            )
        candidates = [*parts, *fresh]
        layout = plan_layout(candidates, current)
        rows_of = {part.name: part.rows.num_rows for part in candidates}
        rewritten = _rewrite(ray, folder, layout.rewrites, ray_wait)
        written = [(name, rows_of[name]) for name in layout.keep] + rewritten
        with_hog = hog and resolve_model(model).family != "hog"
        if with_hog:
            rewritten_from = dict(zip((name for name, _ in rewritten), layout.rewrites, strict=True))
            with_hog = make_hog_view(
                ray,
                folder,
                written,
                rewritten_from,
                max_pixels=max_pixels,
                wait_s=ray_wait,
                hog_model=hog_model_for(model, outline=outline_wanted(model, ink_choice)),
            )
        else:
            drop_hog_view(folder)
        commit_index(
            folder,
            written,
            {
                "model": model,
                "model_id": extractor.model_id,
                # What made the vectors, as run.json keeps it: queries embedded later must use the same model.
                "model_record": replace(extractor.record, model_id=extractor.model_id).to_dict(),
                "dim": extractor.dim,
                "sources": [os.path.abspath(root) for root in roots],
                "skipped": len(skipped),
            }
            | ({} if ink_choice is None else {"ink_sample": ink_choice.to_dict()}),
        )
        remove_unindexed(folder, {name for name, _ in written})
    n_extracted = len(paths_of_hash) - len(failed)
    return ShardedEmbedding(
        run_dir=folder.root,
        rows=len(current),
        parts=len(written),
        dim=extractor.dim,
        model_id=extractor.model_id,
        n_extracted=n_extracted,
        n_reused=len(current) - n_extracted,
        parts_rewritten=len(layout.rewrites),
        skipped=sorted(skipped, key=lambda item: item.path),
        seconds=time.perf_counter() - started,
        hog=with_hog,
        ink=ink_choice,
    )


def _with_copies(
    chunk: Embeddings, paths_of_hash: dict[str, list[str]], stat_of: dict[str, tuple[int, int]]
) -> pa.Table:
    """The chunk's store rows, with a row more for every other path of the same content."""
    table = chunk.to_table()
    if all(len(paths_of_hash[digest]) == 1 for digest in chunk.content_hashes):
        return table
    rows, paths = [], []
    for row, digest in enumerate(chunk.content_hashes):
        for path in paths_of_hash[digest]:
            rows.append(row)
            paths.append(path)
    return with_files(
        table,
        rows,
        [escape_name(path) for path in paths],
        [stat_of[path][0] for path in paths],
        [stat_of[path][1] for path in paths],
    )


def _rewrite(ray: ModuleType, folder: RunFolder, rewrites: Sequence[Rewrite], wait_s: float) -> list[tuple[str, int]]:
    """Write each rewrite's rows as a new part, read and selected by Ray tasks; (name, rows) in the order given."""
    if not rewrites:
        return []
    task = ray.remote(num_cpus=1)(select_rows)
    directory = parts_dir(folder.root)
    calls = [(lambda rewrite=rewrite: task.remote(str(directory / rewrite.source), rewrite)) for rewrite in rewrites]
    names: list[tuple[str, int]] = [("", 0)] * len(rewrites)
    with progress_bar("rewriting parts", len(rewrites), unit="parts") as advance:
        for index, table in run_tasks(ray, calls, wait_s):
            names[index] = (write_part(folder, table), table.num_rows)
            advance(1)
    return names
