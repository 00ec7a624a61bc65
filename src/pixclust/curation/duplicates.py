"""Duplicate groups: candidates from the embedding's nearest neighbours, verified on the image files.

Two stages, as copy detection is done in the field. The embedding proposes:
each image's ``DEFAULT_CANDIDATES`` nearest neighbours at cosine
``DEFAULT_CANDIDATE_SIMILARITY`` or more (permissive on purpose: a greyscale
or rotated copy of a photo can sit at 0.68). Each proposed pair is then
verified on the files (:mod:`pixclust.curation.verify`), in worker processes.
Files with the same content are exact copies without verification. Where the
embeddings name no readable files (an ``embeddings.npy``), nothing can be
verified and a pair is a duplicate at cosine ``UNVERIFIED_SIMILARITY``.

Groups are built from the verified pairs, best first, but two images that
verification found to be *different* pictures (a recoloured copy and its
original) are never put in one group, even through a third image that
matches both (the greyscale copy, which has no colour to tell): that third
image joins the group it matched first. Each group's keeper is a whole
picture (never a crop of another), then the one with the most pixels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from pixclust.curation.verify import Signature, Verdict, signature, verify_pairs
from pixclust.embeddings import Embeddings
from pixclust.errors import DecodeError, UsageError
from pixclust.index import VectorIndex
from pixclust.progress import progress_bar
from pixclust.workers import map_chunks, map_chunks_sharing

DEFAULT_CANDIDATES = 20
# On bench/duplicates.py's photos copies sat at cosine 0.65 or more with their originals; 0.60 leaves
# a margin and, against 0.50, 7% fewer pairs to verify with the same answers.
DEFAULT_CANDIDATE_SIMILARITY = 0.60
# Which image of a group to keep. Whatever the rule, a whole picture is kept rather than a crop of it;
# ties go to the file whose path sorts first.
KEEP_RULES = {
    "largest": "the most pixels, then the largest file",
    "smallest-file": "the smallest file",
    "oldest": "the oldest file (modification time)",
    "newest": "the newest file (modification time)",
    "first-path": "the file whose path sorts first",
}
DEFAULT_KEEP = "largest"
# Without files to verify, the cosine at which a pair counts (the embedding alone; see the docstring).
UNVERIFIED_SIMILARITY = 0.90
# Images (signatures) or pairs (verification) per task given to a worker process.
_SIGNATURE_CHUNK = 64
_PAIR_CHUNK = 256
# Candidate images whose signatures are made together, after which the pairs they complete are checked
# and the signatures no later pair needs are let go. Holding every candidate's signature (34 KB) took
# 2.45 GB for 70,000 Fashion-MNIST images, whose 1,122,773 pairs reach every one; in blocks of this
# many, ordered by check_order, at most 17,205 were held at once (29,621 in the files' own order).
_CHECK_BLOCK = 4096
# Candidate images per k-means bucket in check_order: 17 buckets for those 70,000 (70 buckets held
# a few more, 280 more still).
_ORDER_BUCKET = 4096
# ... fitted on this many images a bucket: 0.9 s instead of 10 s there, with as few held (fitted on
# all, 17,368), and a cost that stays small at a million candidates.
_ORDER_SAMPLE_PER_BUCKET = 50


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows that show one picture. ``keeper`` is the one to keep (a whole picture, not a part of one; then the
    largest resolution, then the largest file).

    ``kind`` is the group's: ``exact`` (every file has the same content),
    ``partial`` (one shows part of another), ``mirrored`` (one is another flipped
    left to right; looked for only with ``mirror=True``) or ``near``. ``kinds`` says it per
    row (``partial``: this row shows part of another; the keeper's is
    ``keeper``), and ``evidence`` what verification measured for the row and
    the keeper (or, when that pair was not compared, another row of the group).
    ``min_similarity`` is the lowest embedding cosine of those pairs.
    """

    rows: tuple[int, ...]
    keeper: int
    kind: str
    min_similarity: float
    kinds: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()


@dataclass
class DuplicateReport:
    """Duplicate groups, largest first, and what was checked.

    ``candidates`` pairs were proposed by the embedding; ``verified`` of them
    were compared on their files (the rest could not be read, or nothing was
    verified); ``recoloured`` pairs matched in structure but not in colour.
    ``threshold`` is the candidates' cosine.
    """

    groups: list[DuplicateGroup]
    threshold: float
    n_images: int
    candidates: int = 0
    verified: int = 0
    recoloured: int = 0
    unreadable: int = 0

    @property
    def n_redundant(self) -> int:
        """Images that could be dropped if each group kept only its keeper."""
        return sum(len(group.rows) - 1 for group in self.groups)


class RowFacts(Protocol):
    """What choosing a keeper reads of each row: :class:`~pixclust.embeddings.Embeddings` has it, and so has
    the sharded finder's table of the rows in its groups."""

    paths: Sequence[str]
    image_sizes: np.ndarray
    file_sizes: np.ndarray
    mtimes_ns: np.ndarray


@dataclass(frozen=True)
class Link:
    """One accepted pair: the two rows, the row that shows part of the other (None: neither), its kind and
    evidence, its rank among links, and the embedding cosine."""

    left: int
    right: int
    part: int | None
    kind: str
    evidence: str
    order: tuple[int, float]
    similarity: float


def candidate_pairs(
    vectors: np.ndarray, *, neighbours: int, threshold: float, index: VectorIndex | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``neighbours`` nearest rows at cosine ``threshold`` or more, as unique pairs (left < right)."""
    if len(vectors) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    index = index or VectorIndex(vectors)
    sims, ids = index.search(vectors, min(neighbours, len(vectors) - 1) + 1)
    own = np.repeat(np.arange(len(vectors)), ids.shape[1])
    other, sim = ids.ravel(), sims.ravel()
    keep = (other >= 0) & (other != own) & (sim >= threshold)
    left, right = np.minimum(own[keep], other[keep]), np.maximum(own[keep], other[keep])
    pairs, first = np.unique(np.stack([left, right], axis=1), axis=0, return_index=True)
    return pairs[:, 0], pairs[:, 1], sim[keep][first]


def find_duplicates(
    embeddings: Embeddings,
    *,
    threshold: float | None = None,
    neighbours: int = DEFAULT_CANDIDATES,
    colour: bool = True,
    verify_files: bool | None = None,
    keep: str = DEFAULT_KEEP,
    mirror: bool = False,
    index: VectorIndex | None = None,
    involving: np.ndarray | None = None,
) -> DuplicateReport:
    """Exact, near and partial duplicate groups.

    ``threshold`` is the cosine a candidate needs (default
    ``DEFAULT_CANDIDATE_SIMILARITY`` when files are verified,
    ``UNVERIFIED_SIMILARITY`` when not); ``verify_files`` defaults to whether
    the embeddings name image files; ``colour=False`` lets a recoloured copy
    count as a duplicate; ``keep`` is one of ``KEEP_RULES``; ``mirror`` also finds copies flipped
    left to right (kind ``mirrored``). ``involving`` (row ids) compares only pairs with one of those
    rows in them: groups among the other rows are then left out.
    """
    if keep not in KEEP_RULES:
        raise UsageError(f"--keep {keep!r} is not a rule; choose one of {', '.join(KEEP_RULES)}")
    verify_files = embeddings.names_files if verify_files is None else verify_files
    if threshold is None:
        threshold = DEFAULT_CANDIDATE_SIMILARITY if verify_files else UNVERIFIED_SIMILARITY
    if not 0.0 < threshold <= 1.0:
        raise UsageError(
            f"--threshold {threshold} must be in (0, 1]; it is the cosine a pair needs before it is "
            f"compared ({DEFAULT_CANDIDATE_SIMILARITY} by default)"
        )
    if neighbours < 1:
        raise UsageError(f"neighbours={neighbours} must be at least 1")
    n = len(embeddings)
    content = np.arange(n)
    links: list[Link] = []
    for rows in _equal_content(embeddings):
        content[rows] = rows[0]
        links.extend(exact_links(rows))
    left, right, sims = candidate_pairs(embeddings.vectors, neighbours=neighbours, threshold=threshold, index=index)
    distinct = content[left] != content[right]
    if involving is not None:
        distinct &= np.isin(left, involving) | np.isin(right, involving)
    left, right, sims = left[distinct], right[distinct], sims[distinct]
    report = DuplicateReport([], float(threshold), n, candidates=len(left))
    verdicts = (
        _verify_pairs(embeddings.paths, embeddings.vectors, left, right, colour=colour, mirror=mirror)
        if verify_files
        else None
    )
    found, apart = verdict_links(left, right, sims, verdicts, report)
    report.groups = group_links(embeddings, [*links, *found], apart, content, keep)
    return report


def verdict_links(
    left: np.ndarray,
    right: np.ndarray,
    sims: np.ndarray,
    verdicts: Sequence[Verdict | None] | None,
    report: DuplicateReport,
) -> tuple[list[Link], set[tuple[int, int]]]:
    """The links the candidate pairs' ``verdicts`` accept (None: nothing verified, every pair is one) and the pairs
    found to be different pictures; ``report``'s counts of verified, recoloured and unreadable pairs go up."""
    if verdicts is None:
        return [
            Link(i, j, None, "near", f"cosine {sim:.3f}", (1, -sim), sim)
            for i, j, sim in zip(left.tolist(), right.tolist(), sims.tolist(), strict=True)
        ], set()
    links: list[Link] = []
    apart: set[tuple[int, int]] = set()
    for i, j, sim, verdict in zip(left.tolist(), right.tolist(), sims.tolist(), verdicts, strict=True):
        if verdict is None:
            report.unreadable += 1
            continue
        report.verified += 1
        if verdict.recoloured:
            report.recoloured += 1
            apart.add((i, j))
        elif verdict.same:
            # Pairs whose colours were compared (and agree) are joined first, pairs with an image
            # that has no colour (a greyscale copy) last: by then the coloured images are grouped
            # by colour, and the grey one joins the group it matches best.
            order = (1 if verdict.colour is not None else 2, -verdict.score)
            part = {0: None, 1: i, 2: j}[verdict.part]
            kind = "mirrored" if verdict.mirrored else ("near" if part is None else "partial")
            links.append(Link(i, j, part, kind, verdict.evidence, order, sim))
    return links, apart


def extend_duplicates(embeddings: Embeddings, found: DuplicateReport, first_new: int) -> DuplicateReport:
    """``found`` (the groups among rows below ``first_new``) with the rows from ``first_new`` on joined in.

    The finder runs on the new rows and each one's nearest earlier rows only, so the cost
    is that of the new rows, not of all. A group the new rows join keeps its keeper (the
    image that was there first, whatever the new one's size); a new row takes the kind and
    evidence the finder gave it. Groups of new rows only are added as found.
    """
    new_rows = np.arange(first_new, len(embeddings))
    if not len(new_rows):
        return found
    nearby = [new_rows]
    if first_new:
        _, ids = VectorIndex(embeddings.vectors[:first_new]).search(embeddings.vectors[first_new:], DEFAULT_CANDIDATES)
        nearby.append(ids[ids >= 0])
    rows = np.unique(np.concatenate(nearby))
    # Pairs of earlier rows were compared when ``found`` was made.
    among = find_duplicates(embeddings.take(rows), involving=np.flatnonzero(rows >= first_new))
    group_of = {row: index for index, group in enumerate(found.groups) for row in group.rows}
    groups = dict(enumerate(found.groups))
    keys = itertools.count(len(found.groups))
    for group in among.groups:
        members = [int(rows[member]) for member in group.rows]
        if all(member < first_new for member in members):
            continue
        joined = sorted({group_of[member] for member in members if member in group_of})
        if not joined:
            groups[next(keys)] = replace(group, rows=tuple(members), keeper=int(rows[group.keeper]))
            continue
        # Earlier groups bridged by the new rows become one; the first keeps its keeper.
        base = groups[joined[0]]
        kinds = dict(zip(base.rows, base.kinds, strict=True))
        evidence = dict(zip(base.rows, base.evidence, strict=True))
        for other in joined[1:]:
            kinds |= dict(zip(groups[other].rows, groups[other].kinds, strict=True))
            evidence |= dict(zip(groups[other].rows, groups[other].evidence, strict=True))
        for member, kind, why in zip(members, group.kinds, group.evidence, strict=True):
            if member not in kinds:
                kinds[member] = group.kind if kind == "keeper" else kind
                evidence[member] = f"like the images it was added beside ({group.kind})" if kind == "keeper" else why
        for other in joined[1:]:
            kinds[groups[other].keeper] = groups[other].kind
        ordered = tuple(sorted(kinds))
        copies = {kinds[row] for row in ordered if row != base.keeper}
        merged = DuplicateGroup(
            rows=ordered,
            keeper=base.keeper,
            kind="exact" if copies == {"exact"} else next((k for k in ("partial", "mirrored") if k in copies), "near"),
            min_similarity=min(base.min_similarity, group.min_similarity),
            kinds=tuple("keeper" if row == base.keeper else kinds[row] for row in ordered),
            evidence=tuple("keeper" if row == base.keeper else evidence[row] for row in ordered),
        )
        groups[joined[0]] = merged
        for other in joined[1:]:
            del groups[other]
        group_of |= {row: joined[0] for row in ordered}
    kept = sorted(groups.values(), key=lambda group: (-len(group.rows), group.rows[0]))
    return DuplicateReport(
        kept,
        found.threshold,
        len(embeddings),
        candidates=found.candidates + among.candidates,
        verified=found.verified + among.verified,
        recoloured=found.recoloured + among.recoloured,
        unreadable=found.unreadable + among.unreadable,
    )


def exact_links(rows: Sequence[int]) -> list[Link]:
    """Links joining rows of one content (the same file's bytes) to the first of them."""
    return [Link(rows[0], row, None, "exact", "same content", (0, -1.0), 1.0) for row in rows[1:]]


def check_order(vectors: np.ndarray, left: np.ndarray, right: np.ndarray, *, random_state: int = 0) -> np.ndarray:
    """The rows of the candidate pairs (``left``, ``right``) in the order their files are checked: near ones together.

    Rows are bucketed by spherical k-means on their ``vectors`` (one bucket per ``_ORDER_BUCKET``
    rows), and the buckets put in reverse Cuthill-McKee order of the pairs between them, so that
    a row's pairs mostly fall within a few consecutive blocks of ``_verify_pairs`` and its
    signature can be let go soon after it is made.
    """
    rows = np.unique(np.concatenate([left, right]))
    buckets = len(rows) // _ORDER_BUCKET
    if buckets < 2:
        return rows
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    from pixclust.clustering.large_kmeans import LargeKMeans

    labels = (
        LargeKMeans(buckets, spherical=True, sample_size=buckets * _ORDER_SAMPLE_PER_BUCKET, random_state=random_state)
        .fit(vectors[rows])
        .labels_
    )
    bucket_of = np.zeros(len(vectors), dtype=np.int64)
    bucket_of[rows] = labels
    between = coo_matrix((np.ones(len(left)), (bucket_of[left], bucket_of[right])), shape=(buckets, buckets)).tocsr()
    rank = np.empty(buckets, dtype=np.int64)
    rank[reverse_cuthill_mckee((between + between.T).tocsr(), symmetric_mode=True)] = np.arange(buckets)
    return rows[np.argsort(rank[labels], kind="stable")]


def _verify_pairs(
    paths: Sequence[str],
    vectors: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    *,
    colour: bool,
    mirror: bool,
) -> list[Verdict | None]:
    """Each pair's verdict (None where a file could not be read), computed in worker processes.

    The candidate images are taken in ``check_order``, ``_CHECK_BLOCK`` at a time: their
    signatures are made, the pairs whose other image has one already are checked, and every
    signature that no later pair needs is let go. Each signature is made once, as before; only
    how many are held at once changes.
    """
    order = check_order(vectors, left, right)
    position = np.empty(len(paths), dtype=np.int64)
    position[order] = np.arange(len(order))
    # A pair is checked in the block of whichever of its images comes later; an image is let go after
    # the block of its last pair.
    block_of_pair = np.maximum(position[left], position[right]) // _CHECK_BLOCK
    last_block = np.zeros(len(paths), dtype=np.int64)
    np.maximum.at(last_block, left, block_of_pair)
    np.maximum.at(last_block, right, block_of_pair)
    n_blocks = -(-len(order) // _CHECK_BLOCK)
    pairs_by_block = np.argsort(block_of_pair, kind="stable")
    pair_bounds = np.searchsorted(block_of_pair[pairs_by_block], np.arange(n_blocks + 1))
    rows_by_release = order[np.argsort(last_block[order], kind="stable")]
    release_bounds = np.searchsorted(last_block[rows_by_release], np.arange(n_blocks + 1))
    signatures: dict[int, Signature | None] = {}
    verdicts: list[Verdict | None] = [None] * len(left)
    with progress_bar("duplicate checks", len(left), unit="pairs") as advance:
        for block in range(n_blocks):
            _make_signatures(paths, order[block * _CHECK_BLOCK : (block + 1) * _CHECK_BLOCK].tolist(), signatures)
            checked = pairs_by_block[pair_bounds[block] : pair_bounds[block + 1]]
            found = _check_pairs(paths, left[checked], right[checked], signatures, colour, mirror, advance)
            for pair, verdict in zip(checked.tolist(), found, strict=True):
                verdicts[pair] = verdict
            for row in rows_by_release[release_bounds[block] : release_bounds[block + 1]].tolist():
                del signatures[row]
    return verdicts


def _make_signatures(paths: Sequence[str], rows: list[int], signatures: dict[int, Signature | None]) -> None:
    """Add the signatures of ``rows`` to ``signatures`` (None where a file cannot be read), made in worker processes."""
    row_chunks = [rows[i : i + _SIGNATURE_CHUNK] for i in range(0, len(rows), _SIGNATURE_CHUNK)]
    path_chunks = [[paths[row] for row in chunk] for chunk in row_chunks]
    for chunk, found in zip(row_chunks, map_chunks(signature_chunk, path_chunks), strict=True):
        signatures.update(zip(chunk, found, strict=True))


def _check_pairs(
    paths: Sequence[str],
    left: np.ndarray,
    right: np.ndarray,
    signatures: dict[int, Signature | None],
    colour: bool,
    mirror: bool,
    advance: Callable[[int], None],
) -> list[Verdict | None]:
    """The verdicts of the pairs (``left``, ``right``), whose signatures are all made, checked in worker processes.

    The workers are handed the paths and the block's signatures once, as they start, and each task only
    rows: sent with every pair, two signatures (68 KB) cost the parent more to pickle than a worker
    takes to check them.
    """
    rows = np.unique(np.concatenate([left, right])).tolist()
    shared = (paths, {row: signatures[row] for row in rows})
    tasks = [
        list(zip(left[start : start + _PAIR_CHUNK].tolist(), right[start : start + _PAIR_CHUNK].tolist(), strict=True))
        for start in range(0, len(left), _PAIR_CHUNK)
    ]
    verdicts: list[Verdict | None] = []
    for found in map_chunks_sharing(verify_rows, shared, tasks, colour, mirror):
        verdicts.extend(found)
        advance(len(found))
    return verdicts


def verify_rows(
    shared: tuple[Sequence[str], dict[int, Signature | None]],
    pairs: Sequence[tuple[int, int]],
    colour: bool,
    mirror: bool,
) -> list[Verdict | None]:
    """:func:`verify_chunk` of pairs of rows, given every row's path and signature in ``shared``."""
    paths, signatures = shared
    return verify_chunk([(paths[i], paths[j], signatures[i], signatures[j]) for i, j in pairs], colour, mirror)


def signature_chunk(paths: Sequence[str]) -> list[Signature | None]:
    """Each file's verification signature; None where it cannot be read."""
    found: list[Signature | None] = []
    for path in paths:
        try:
            found.append(signature(path))
        except DecodeError:
            found.append(None)
    return found


def verify_chunk(
    pairs: Sequence[tuple[str, str, Signature | None, Signature | None]], colour: bool, mirror: bool
) -> list[Verdict | None]:
    """The verdict of each pair of (path, path, signature, signature); None where a file could not be read."""
    readable = [pair for pair in pairs if pair[2] is not None and pair[3] is not None]
    verdicts = iter(verify_pairs(readable, colour=colour, mirror=mirror))
    return [next(verdicts) if a is not None and b is not None else None for _, _, a, b in pairs]


def group_links(
    facts: RowFacts, links: list[Link], apart: set[tuple[int, int]], content: np.ndarray, keep: str
) -> list[DuplicateGroup]:
    """Join linked rows, best link first, never joining two rows kept ``apart``; largest group first.

    ``content[row]`` is the first row with ``row``'s content; ``facts`` tells :func:`choose_keeper` what it needs."""
    members = {row: {row} for link in links for row in (link.left, link.right)}
    owner = {row: row for row in members}
    partners: dict[int, set[int]] = {}
    for i, j in apart:
        partners.setdefault(i, set()).add(j)
        partners.setdefault(j, set()).add(i)
    used: dict[int, list[Link]] = {}
    for link in sorted(links, key=lambda link: link.order):
        a, b = owner[link.left], owner[link.right]
        if a != b:
            small, large = sorted((a, b), key=lambda root: len(members[root]))
            if any(partners.get(row, set()) & members[large] for row in members[small]):
                continue
            for row in members[small]:
                owner[row] = large
            members[large] |= members.pop(small)
        used.setdefault(link.left, []).append(link)
        used.setdefault(link.right, []).append(link)
    groups = []
    for rows in members.values():
        if len(rows) < 2:
            continue
        ordered = tuple(sorted(rows))
        parts = {link.part for row in ordered for link in used.get(row, []) if link.part is not None}
        keeper = choose_keeper(facts, ordered, parts, keep)
        matches = [_match_with(row, keeper, used.get(row, []), content, rows) for row in ordered]
        kinds = tuple(
            "keeper" if link is None else ("partial" if row in parts and link.kind != "exact" else link.kind)
            for row, link in zip(ordered, matches, strict=True)
        )
        copies = set(kinds) - {"keeper"}
        found = next((kind for kind in ("partial", "mirrored") if kind in copies), "near")
        kind = "exact" if copies == {"exact"} else found
        groups.append(
            DuplicateGroup(
                rows=ordered,
                keeper=keeper,
                kind=kind,
                min_similarity=float(min(link.similarity for link in matches if link)),
                kinds=kinds,
                evidence=tuple(link.evidence if link else "keeper" for link in matches),
            )
        )
    groups.sort(key=lambda group: (-len(group.rows), group.rows[0]))
    return groups


def _match_with(row: int, keeper: int, links: list[Link], content: np.ndarray, group: set[int]) -> Link | None:
    """How ``row`` is a copy: of the keeper's content, or its best accepted link to the keeper, or to the group."""
    if row == keeper:
        return None
    if content[row] == content[keeper]:
        return Link(row, keeper, None, "exact", "same content", (0, -1.0), 1.0)
    to_keeper = [link for link in links if keeper in (link.left, link.right)]
    within = [link for link in links if link.left in group and link.right in group]
    return min(to_keeper or within, key=lambda link: link.order)


def _equal_content(embeddings: Embeddings) -> list[list[int]]:
    """Rows with the same content hash; the same vector's bytes when hashes are unknown (precomputed input)."""
    groups: dict[object, list[int]] = {}
    for row, digest in enumerate(embeddings.content_hashes):
        key: object = digest or embeddings.vectors[row].tobytes()
        groups.setdefault(key, []).append(row)
    return [rows for rows in groups.values() if len(rows) > 1]


def choose_keeper(facts: RowFacts, rows: Sequence[int], parts: set[int], keep: str) -> int:
    """The row to keep under rule ``keep`` (``KEEP_RULES``), among the whole pictures of the group."""
    path_order = {row: position for position, row in enumerate(sorted(rows, key=lambda row: facts.paths[row]))}

    def preference(row: int) -> tuple[int, ...]:
        width, height = (int(v) for v in facts.image_sizes[row])
        size, modified = int(facts.file_sizes[row]), int(facts.mtimes_ns[row])
        by_rule = {
            "largest": (width * height, size),
            "smallest-file": (-size,),
            "oldest": (-modified,),
            "newest": (modified,),
            "first-path": (),
        }[keep]
        return (row not in parts, *by_rule, -path_order[row])

    return max(rows, key=preference)
