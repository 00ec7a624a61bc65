"""Duplicate groups among embeddings no process holds whole: IVF-PQ candidates, verified on the files by Ray tasks.

The local finder (:mod:`pixclust.curation.duplicates`) holds every vector in
one index. Here, in five passes over parts of the input:

1. Index. The driver trains a faiss IVF-PQ index on a sample of the
   L2-normalised vectors: about 4 sqrt(N) cells, as the local index has, and
   product-quantised codes of up to ``MAX_CODE_BYTES`` bytes. One task per
   part encodes its rows and gives each a 64-bit content key (its file's
   content hash, or its vector's bytes where it has none); the driver adds
   the codes (N x (code + 8) bytes: 72 MB a million rows) and finds the rows
   of one content, which are exact copies without a look at their files.
2. Candidates. The filled index is put in Ray's object store once; one task
   per part searches its rows' ``neighbours`` nearest in ``nprobe`` cells and
   keeps those whose cosine, estimated from the codes, is within
   ``ESTIMATE_MARGIN`` of ``threshold`` or above; the driver keeps each pair once.
3. Rows. Tasks read the path (and, where the input has them, the image's
   size and the file's size and time) of every row in a pair: a column read.
   With no files to compare, they read the rows' vectors too, and the exact
   cosine decides, as it does for the local finder.
4. Verification. Pairs go to tasks in chunks, and each is judged on its two
   files by the local finder's verifier (each file of a chunk signed once).
5. Groups. Accepted pairs are joined as the local finder joins them
   (:func:`~pixclust.curation.duplicates.group_links`), and each group's
   keeper chosen by the same rule.

The driver holds the codes, a content key and content root per row, the
candidate pairs and their paths; vectors only of the sample and, with no
files to compare, of the rows in candidate pairs (refused above
``EXACT_COSINE_BYTES``: a threshold that low makes most rows candidates).
With files, a pair's cosine in ``duplicates.csv`` is the estimate.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from pixclust.clustering.large_kmeans import MIN_SAMPLE
from pixclust.clustering.reduce import is_whole_number, l2_normalize
from pixclust.clustering.views import EMBEDDING_VIEW
from pixclust.curation.duplicates import (
    DEFAULT_CANDIDATE_SIMILARITY,
    DEFAULT_CANDIDATES,
    DEFAULT_KEEP,
    KEEP_RULES,
    UNVERIFIED_SIMILARITY,
    DuplicateReport,
    Link,
    exact_links,
    group_links,
    signature_chunk,
    verdict_links,
    verify_chunk,
)
from pixclust.curation.verify import Verdict
from pixclust.distributed.clusterer import gather_rows, sample_indices
from pixclust.distributed.parts import PATH_COLUMN, Part, VectorParts, part_vectors, read_part
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S, check_engine
from pixclust.embedding.engines.ray import run_tasks
from pixclust.embeddings import VECTOR_COLUMN
from pixclust.errors import DecodeError, UsageError
from pixclust.index import DEFAULT_NPROBE
from pixclust.names import unescape_name
from pixclust.progress import progress_bar

# Cells of the index: 4 sqrt(N), as the local index (pixclust.index) has, each trained on this many sample rows.
TRAIN_PER_CELL = 50
# A code per row of at most this many bytes (one per sub-vector of at least MIN_SUBVECTOR numbers): 64 bytes
# of 256 or 1,280 numbers keep the estimated cosine within a few hundredths.
MAX_CODE_BYTES = 64
MIN_SUBVECTOR = 4
# The columns a run's store has for choosing keepers; other inputs get them from the files.
FACT_COLUMNS = ("width", "height", "file_size", "mtime_ns")
CONTENT_COLUMN = "content_hash"
# Candidates are searched this far below the threshold, as the estimate may be off by that much: for pairs
# above cosine 0.9 it was at most 0.042 off (99th percentile 0.017) with 64-byte codes of 256 numbers
# (bench/scale.py's blobs with near copies planted), at most 0.017 with 16-byte codes of the digits' 64.
ESTIMATE_MARGIN = 0.05
# With no files to compare, the rows in candidate pairs are read whole to compare them exactly, up to this much.
EXACT_COSINE_BYTES = 2**30
# Pairs verified per task: sorted by their first image, so a chunk signs each of its images once.
PAIR_CHUNK = 2_048
# Files whose facts (size, time, image size) a task reads when the input has none.
FACT_CHUNK = 1_024


@dataclass(frozen=True)
class GroupRows:
    """The rows of a sharded finder's groups: ``input_rows`` (their rows in the input), their paths and what a
    keeper is chosen by (image sizes, file sizes, modification times); a group's row ``r`` is row ``r`` here."""

    input_rows: np.ndarray
    paths: list[str]
    image_sizes: np.ndarray
    file_sizes: np.ndarray
    mtimes_ns: np.ndarray


class ShardedDuplicateFinder:
    """Find duplicate groups among the rows of a :class:`VectorParts` on Ray (see the module docstring).

    The settings are the local finder's (:func:`~pixclust.curation.duplicates.find_duplicates`):
    ``threshold`` (the cosine a pair needs to be compared; None: its default for verified or
    unverified pairs), ``neighbours``, ``colour``, ``keep``, ``mirror`` and ``verify_files`` (None:
    whether every row has a content hash, which only pixclust's own store gives). ``sample_size``
    is how many rows train the index (None: enough for 4 sqrt(N) cells and at least
    ``MIN_SAMPLE``); ``nprobe`` the cells a search visits; ``ray_wait`` how long the run may find the
    cluster without a CPU. Fitted: ``report_`` (groups over the rows of ``rows_``, a
    :class:`GroupRows`), ``verified_files_``, ``threshold_``, ``layout_`` (cells, code bytes, bits,
    sample rows) and ``timings_`` (seconds per pass).
    """

    def __init__(
        self,
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
        ray_wait: float = DEFAULT_RAY_WAIT_S,
    ) -> None:
        self.threshold = threshold
        self.neighbours = neighbours
        self.colour = colour
        self.keep = keep
        self.mirror = mirror
        self.verify_files = verify_files
        self.sample_size = sample_size
        self.nprobe = nprobe
        self.random_state = random_state
        self.ray_wait = ray_wait

    def check(self) -> None:
        """Raise :class:`UsageError` for settings that cannot work, before anything is read."""
        if self.keep not in KEEP_RULES:
            raise UsageError(f"--keep {self.keep!r} is not a rule; choose one of {', '.join(KEEP_RULES)}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise UsageError(
                f"--threshold {self.threshold} must be in (0, 1]; it is the cosine a pair needs before it is "
                f"compared ({DEFAULT_CANDIDATE_SIMILARITY} by default)"
            )
        for name, value, least in (("neighbours", self.neighbours, 1), ("nprobe", self.nprobe, 1)):
            if not is_whole_number(value) or value < least:
                raise UsageError(f"{name}={value!r} is not allowed; use a whole number >= {least}")
        if self.sample_size is not None and (not is_whole_number(self.sample_size) or self.sample_size < 2):
            raise UsageError(f"sample_size {self.sample_size!r} is not allowed; use a whole number >= 2")
        check_engine("ray", None, ray_wait=self.ray_wait)

    def fit(self, data: VectorParts, *, ray: Any) -> ShardedDuplicateFinder:
        """Find the groups among ``data``'s rows; ``ray`` is the initialised module."""
        self.check()
        self.timings_: dict[str, float] = {}
        with self._timed("train_s"):
            trained = self._train(data, ray)
        with self._timed("encode_s"):
            index, keys, unhashed = self._fill(data, trained, ray)
        self.verified_files_ = (
            (CONTENT_COLUMN in data.columns and unhashed == 0) if self.verify_files is None else self.verify_files
        )
        default_threshold = DEFAULT_CANDIDATE_SIMILARITY if self.verified_files_ else UNVERIFIED_SIMILARITY
        self.threshold_ = float(default_threshold if self.threshold is None else self.threshold)
        with self._timed("search_s"):
            left, right, sims = self._candidates(data, index, ray)
            del index
            copies = content_groups(keys)
            del keys
            content = np.arange(data.n_rows, dtype=np.int64)
            for group in copies:
                content[group] = group[0]
            distinct = content[left] != content[right]
            left, right, sims = left[distinct], right[distinct], sims[distinct]
        with self._timed("rows_s"):
            rows = np.unique(np.concatenate([left, right, *copies]))
            if not self.verified_files_:
                self._check_exact_fits(len(rows), data.dim)
            paths, facts, vectors = self._row_columns(data, rows, ray, with_vectors=not self.verified_files_)
        left, right = np.searchsorted(rows, left), np.searchsorted(rows, right)
        if vectors is not None:
            # With no files to compare, the cosine decides: the exact one, from the rows' own vectors.
            sims = np.einsum("ij,ij->i", vectors[left], vectors[right])
            close = sims >= self.threshold_
            left, right, sims = left[close], right[close], sims[close]
        report = DuplicateReport([], self.threshold_, data.n_rows, candidates=len(left))
        with self._timed("verify_s"):
            verdicts = self._verify(paths, left, right, ray) if self.verified_files_ else None
            accepted, apart = verdict_links(left, right, sims, verdicts, report)
        links = [link for group in copies for link in exact_links(np.searchsorted(rows, group).tolist())] + accepted
        members = np.unique([row for link in links for row in (link.left, link.right)]).astype(np.int64)
        self.rows_ = self._group_rows(rows, paths, facts, members, ray)
        renumber = {int(row): position for position, row in enumerate(members.tolist())}
        # Each member's content root (the first row of its content, itself a member) as a member's number.
        member_content = np.searchsorted(members, np.searchsorted(rows, content[rows[members]]))
        report.groups = group_links(
            self.rows_,
            [_renumbered(link, renumber) for link in links],
            {(renumber[i], renumber[j]) for i, j in apart if i in renumber and j in renumber},
            member_content,
            self.keep,
        )
        self.report_ = report
        return self

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings_[name] = time.perf_counter() - started

    def _check_exact_fits(self, n_rows: int, dim: int) -> None:
        if n_rows * dim * 4 > EXACT_COSINE_BYTES:
            raise UsageError(
                f"{n_rows:,} embeddings have a look-alike at cosine {self.threshold_:g} or more, too many to compare "
                f"exactly in this process ({n_rows * dim * 4 / 2**30:.1f} GiB); raise --threshold, or give "
                "embeddings pixclust made (with content hashes), whose pairs are compared on their files"
            )

    def _tasks(
        self, ray: Any, calls: Sequence[Callable[[], Any]], description: str, *, unit: str = "parts"
    ) -> Iterator[tuple[int, Any]]:
        """:func:`run_tasks`, with a progress bar."""
        with progress_bar(description, len(calls), unit=unit) as advance:
            for done in run_tasks(ray, calls, self.ray_wait):
                advance(1)
                yield done

    def _train(self, data: VectorParts, ray: Any) -> bytes:
        """The empty index trained on a sample, serialised (what the encoding tasks need)."""
        import faiss

        n_cells = int(max(1, 4 * np.sqrt(data.n_rows)))
        size = min(data.n_rows, self.sample_size or max(MIN_SAMPLE, TRAIN_PER_CELL * n_cells))
        sample = l2_normalize(
            gather_rows(data, sample_indices(data.n_rows, size, self.random_state), ray, self.ray_wait)[EMBEDDING_VIEW]
        )
        n_cells = int(max(1, min(n_cells, size // TRAIN_PER_CELL)))
        sub_vectors = max(
            (m for m in range(1, MAX_CODE_BYTES + 1) if data.dim % m == 0 and data.dim // m >= MIN_SUBVECTOR),
            default=1,
        )
        # Each sub-vector's codebook has 2^bits codes: 256 where the sample is a sample (100,000 rows or more); on
        # fewer rows the sample is every row, and codes fitted closely to the rows they encode do no harm.
        bits = int(np.clip(np.floor(np.log2(max(size, 2))), 1, 8))
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(data.dim), data.dim, n_cells, sub_vectors, bits)
        for settings in (index.cp, index.pq.cp):
            settings.seed = self.random_state
            # The sizes are chosen above; faiss would warn of k-means on fewer than 39 rows a centre.
            settings.min_points_per_centroid = 1
        index.train(sample)
        self.layout_ = {"cells": n_cells, "code_bytes": int(index.code_size), "bits": bits, "sample_rows": size}
        return faiss.serialize_index(index)

    def _fill(self, data: VectorParts, trained: bytes, ray: Any) -> tuple[Any, np.ndarray, int]:
        """The index filled with every row's code, each row's content key, and how many rows had no content hash."""
        import faiss

        index = faiss.deserialize_index(trained)
        trained_ref = ray.put(trained)
        keys = np.empty(data.n_rows, dtype=np.int64)
        unhashed = 0
        task = ray.remote(num_cpus=1)(encode_part)
        hashed = CONTENT_COLUMN in data.columns
        calls = [(lambda part=part: task.remote(part, data.dim, trained_ref, hashed)) for part in data.parts]
        for done, (codes, part_keys, part_unhashed) in self._tasks(ray, calls, "encoding parts"):
            part = data.parts[done]
            index.add_sa_codes(codes, np.arange(part.offset, part.offset + part.rows, dtype=np.int64))
            keys[part.offset : part.offset + part.rows] = part_keys
            unhashed += part_unhashed
        return index, keys, unhashed

    def _candidates(self, data: VectorParts, index: Any, ray: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique pairs (left < right) at an estimated cosine within ``ESTIMATE_MARGIN`` of ``threshold_`` or above,
        with the higher of their two estimates."""
        import faiss

        index_ref = ray.put(faiss.serialize_index(index))
        task = ray.remote(num_cpus=1)(search_part)
        neighbours = min(self.neighbours, data.n_rows - 1)
        cut = self.threshold_ - ESTIMATE_MARGIN
        calls = [
            (lambda part=part: task.remote(part, data.dim, index_ref, neighbours, self.nprobe, cut))
            for part in data.parts
        ]
        found = [pairs for _, pairs in self._tasks(ray, calls, "searching parts")] if neighbours >= 1 else []
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32)
        left = np.concatenate([pairs[0] for pairs in found])
        right = np.concatenate([pairs[1] for pairs in found])
        sims = np.concatenate([pairs[2] for pairs in found])
        order = np.lexsort((-sims, right, left))
        left, right, sims = left[order], right[order], sims[order]
        first = np.ones(len(left), dtype=bool)
        first[1:] = (left[1:] != left[:-1]) | (right[1:] != right[:-1])
        return left[first], right[first], sims[first]

    def _row_columns(
        self, data: VectorParts, rows: np.ndarray, ray: Any, *, with_vectors: bool
    ) -> tuple[list[str], dict[str, np.ndarray] | None, np.ndarray | None]:
        """The paths of ``rows`` (ascending), their :data:`FACT_COLUMNS` where the input has them, and (``with_vectors``)
        their L2-normalised vectors."""
        columns = [PATH_COLUMN, *(FACT_COLUMNS if set(FACT_COLUMNS) <= data.columns else ())]
        starts = np.array([part.offset for part in data.parts])
        bounds = np.searchsorted(rows, [*starts, data.n_rows])
        wanted = [
            (index, slice(int(bounds[index]), int(bounds[index + 1])))
            for index in range(len(data.parts))
            if bounds[index + 1] > bounds[index]
        ]
        task = ray.remote(num_cpus=1)(part_columns)
        calls = [
            (
                lambda part=data.parts[index], taken=taken: task.remote(
                    part, data.dim, rows[taken] - part.offset, columns, with_vectors
                )
            )
            for index, taken in wanted
        ]
        tables: list[pa.Table | None] = [None] * len(wanted)
        # Filled part by part: the driver holds one copy of the rows' vectors.
        vectors = np.empty((len(rows), data.dim), dtype=np.float32) if with_vectors else None
        for done, (table, part_rows) in self._tasks(ray, calls, "reading paths"):
            tables[done] = table
            if vectors is not None:
                vectors[wanted[done][1]] = part_rows
        if not tables:
            return [], None, vectors
        joined = pa.concat_tables([table for table in tables if table is not None])
        paths = [unescape_name(path) for path in joined.column(PATH_COLUMN).to_pylist()]
        facts = None
        if FACT_COLUMNS[0] in columns:
            facts = {name: joined.column(name).to_numpy(zero_copy_only=False) for name in FACT_COLUMNS}
        return paths, facts, vectors

    def _verify(self, paths: list[str], left: np.ndarray, right: np.ndarray, ray: Any) -> list[Verdict | None]:
        """Each pair's verdict, in the order given, computed by tasks of ``PAIR_CHUNK`` pairs."""
        task = ray.remote(num_cpus=1)(verify_paths)
        chunks = [slice(start, start + PAIR_CHUNK) for start in range(0, len(left), PAIR_CHUNK)]
        calls = [
            (
                lambda chunk=chunk: task.remote(
                    [paths[row] for row in left[chunk].tolist()],
                    [paths[row] for row in right[chunk].tolist()],
                    self.colour,
                    self.mirror,
                )
            )
            for chunk in chunks
        ]
        verdicts: list[list[Verdict | None]] = [[] for _ in chunks]
        for done, found in self._tasks(ray, calls, "duplicate checks", unit="tasks"):
            verdicts[done] = found
        return [verdict for found in verdicts for verdict in found]

    def _group_rows(
        self,
        rows: np.ndarray,
        paths: list[str],
        facts: dict[str, np.ndarray] | None,
        members: np.ndarray,
        ray: Any,
    ) -> GroupRows:
        """The :class:`GroupRows` of ``members`` (positions in ``rows``): facts from the input, else the files."""
        member_paths = [paths[member] for member in members.tolist()]
        facts = (
            self._file_facts(member_paths, ray)
            if facts is None
            else {name: values[members] for name, values in facts.items()}
        )
        return GroupRows(
            input_rows=rows[members],
            paths=member_paths,
            image_sizes=np.stack([facts["width"], facts["height"]], axis=1).astype(np.int64),
            file_sizes=np.asarray(facts["file_size"], dtype=np.int64),
            mtimes_ns=np.asarray(facts["mtime_ns"], dtype=np.int64),
        )

    def _file_facts(self, paths: list[str], ray: Any) -> dict[str, np.ndarray]:
        """Image size, file size and modification time of each file; zeros where the files are not read."""
        if not self.verified_files_:
            zeros = np.zeros(len(paths), dtype=np.int64)
            return dict.fromkeys(FACT_COLUMNS, zeros)
        task = ray.remote(num_cpus=1)(file_facts)
        chunks = [paths[start : start + FACT_CHUNK] for start in range(0, len(paths), FACT_CHUNK)]
        found: list[np.ndarray] = [np.zeros((0, 4), dtype=np.int64)] * len(chunks)
        calls = [(lambda chunk=chunk: task.remote(chunk)) for chunk in chunks]
        for done, values in self._tasks(ray, calls, "reading file facts", unit="tasks"):
            found[done] = values
        table = np.concatenate(found) if found else np.zeros((0, 4), dtype=np.int64)
        return {name: table[:, column] for column, name in enumerate(FACT_COLUMNS)}


def _renumbered(link: Link, renumber: dict[int, int]) -> Link:
    part = None if link.part is None else renumber[link.part]
    return replace(link, left=renumber[link.left], right=renumber[link.right], part=part)


def content_groups(keys: np.ndarray) -> list[np.ndarray]:
    """The rows sharing a key, ascending, for every key that more than one row has."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    shared = ends - starts > 1
    return [
        np.sort(order[start:end]) for start, end in zip(starts[shared].tolist(), ends[shared].tolist(), strict=True)
    ]


def encode_part(part: Part, dim: int, trained: bytes, hashed: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Ray task: the part's index codes, each row's 64-bit content key, and how many rows had no content hash."""
    import faiss

    columns = (PATH_COLUMN, VECTOR_COLUMN, CONTENT_COLUMN) if hashed else (PATH_COLUMN, VECTOR_COLUMN)
    table = read_part(part, columns=columns)
    vectors = part_vectors(table, dim, file=part.file)
    index = faiss.deserialize_index(trained)
    codes = index.sa_encode(l2_normalize(vectors))
    digests = table.column(CONTENT_COLUMN).to_pylist() if hashed else [None] * table.num_rows
    keys = np.array(
        [
            _content_key(digest.encode() if digest else vector.tobytes())
            for digest, vector in zip(digests, vectors, strict=True)
        ],
        dtype=np.int64,
    )
    return codes, keys, sum(1 for digest in digests if not digest)


def _content_key(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def search_part(
    part: Part, dim: int, serialized: np.ndarray, neighbours: int, nprobe: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray task: pairs (left < right, rows of the input) of this part's rows and their nearest rows, at an
    estimated cosine of ``threshold`` or more."""
    import faiss

    vectors = l2_normalize(part_vectors(read_part(part), dim, file=part.file))
    index = faiss.deserialize_index(serialized)
    index.nprobe = nprobe
    # The row itself is found too (at about the codes' error), so one more is asked for.
    distances, ids = index.search(vectors, neighbours + 1)
    own = np.repeat(np.arange(part.offset, part.offset + part.rows, dtype=np.int64), ids.shape[1])
    other, sims = ids.ravel(), (1.0 - distances.ravel() / 2.0).astype(np.float32)
    keep = (other >= 0) & (other != own) & (sims >= threshold)
    own, other, sims = own[keep], other[keep], sims[keep]
    return np.minimum(own, other), np.maximum(own, other), sims


def part_columns(
    part: Part, dim: int, rows: np.ndarray, columns: Sequence[str], with_vectors: bool
) -> tuple[pa.Table, np.ndarray | None]:
    """Ray task: ``columns`` of ``rows`` (indices within the part, ascending), and (``with_vectors``) their
    L2-normalised vectors."""
    table = read_part(part, columns=[*columns, *([VECTOR_COLUMN] if with_vectors else [])]).take(pa.array(rows))
    if not with_vectors:
        return table, None
    return table.select(list(columns)), l2_normalize(part_vectors(table, dim, file=part.file))


def verify_paths(left: list[str], right: list[str], colour: bool, mirror: bool) -> list[Verdict | None]:
    """Ray task: the verdict of each pair of files (None where one cannot be read); each file is signed once."""
    unique = sorted(set(left) | set(right))
    signatures = dict(zip(unique, signature_chunk(unique), strict=True))
    return verify_chunk(
        [(a, b, signatures[a], signatures[b]) for a, b in zip(left, right, strict=True)], colour, mirror
    )


def file_facts(paths: Sequence[str]) -> np.ndarray:
    """Ray task: width, height, size and modification time of each file (zeros for one that cannot be read)."""
    from pixclust.embedding.decode import full_size, load_rgb

    found = np.zeros((len(paths), 4), dtype=np.int64)
    for row, path in enumerate(paths):
        try:
            status = os.stat(path)
            found[row] = (*full_size(load_rgb(path, draft_size=64)), status.st_size, status.st_mtime_ns)
        except (OSError, DecodeError):
            continue
    return found
