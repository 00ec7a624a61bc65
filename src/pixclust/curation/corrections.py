"""A person's corrections to a clustering, kept so that clustering again does not undo them.

Cluster numbers change every time a collection is clustered, so corrections
are kept by the images they were made on, never by number:

- a name a person gave (a rename) follows the images it was given to: the
  cluster holding most of them gets it (each cluster one name, the largest
  overlap first);
- a merge is kept as each merged cluster's most typical images (its
  *anchors*): the clusters holding most of each set are merged again;
- an image moved into a cluster goes to the cluster holding most of that
  cluster's anchors; one moved into a cluster the person made goes to that
  cluster, which is made again;
- images marked as outliers or excluded go to ``_outliers`` / ``_excluded``;
- images pinned together end in the cluster holding most of them; images
  pinned apart that share a cluster are split, each later one going to the
  nearest other cluster.

:func:`apply_edits` carries an edits file out on a run's clusters and returns
the corrections it amounts to; :func:`correct` carries kept corrections out on
a new clustering. Both work on one cluster name per image.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.curation.edits import (
    EXCLUDED_CLUSTER,
    EXCLUDED_LABEL,
    OUTLIERS_CLUSTER,
    OUTLIERS_LABEL,
    RESERVED_NAMES,
    Edits,
)
from pixclust.errors import UsageError
from pixclust.names import escape_name, unescape_name

CORRECTIONS_VERSION = 1
# The most typical images of a cluster that stand for it when it is found again.
ANCHORS = 10


@dataclass
class Corrections:
    """What a person corrected, by image (see the module's docstring). Paths are the run's own."""

    names: dict[str, list[str]] = field(default_factory=dict)
    merged: list[list[list[str]]] = field(default_factory=list)
    placed: dict[str, list[str]] = field(default_factory=dict)
    made: dict[str, list[str]] = field(default_factory=dict)
    outlier: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    together: list[list[str]] = field(default_factory=list)
    apart: list[list[str]] = field(default_factory=list)
    # What one apply did to names (old -> new) and to merged clusters (merged away -> kept): followed_by updates
    # the corrections kept before it by them; not kept themselves.
    renamed: dict[str, str] = field(default_factory=dict)
    merged_away: dict[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not any(
            (self.names, self.merged, self.placed, self.made, self.outlier, self.exclude, self.together, self.apart)
        )

    def followed_by(self, later: Corrections) -> Corrections:
        """These corrections with ``later``'s on top: an image's latest placement wins, and a name given again
        is given to its latest images."""
        moved = set(later.placed) | {path for paths in later.made.values() for path in paths}
        moved |= set(later.outlier) | set(later.exclude)
        made: dict[str, list[str]] = {}
        for name, paths in self.made.items():
            name = later.renamed.get(name, name)
            # A made cluster merged into one of the run's is that cluster's now: its images follow the clustering.
            name = later.merged_away.get(name, name)
            if name in self.made or name in later.made or name in later.renamed.values():
                made.setdefault(name, []).extend(path for path in paths if path not in moved)
        for name, paths in later.made.items():
            made.setdefault(name, []).extend(paths)
        gone = set(later.renamed) | set(later.merged_away)
        names = {name: paths for name, paths in self.names.items() if name not in gone} | later.names
        return Corrections(
            names={name: paths for name, paths in names.items() if name not in made},
            merged=_unique([*self.merged, *later.merged]),
            placed={path: anchors for path, anchors in self.placed.items() if path not in moved} | later.placed,
            made=made,
            outlier=_unique([path for path in self.outlier if path not in moved] + later.outlier),
            exclude=_unique([path for path in self.exclude if path not in moved] + later.exclude),
            together=_unique([*self.together, *later.together]),
            apart=_unique([*self.apart, *later.apart]),
        )

    def to_dict(self) -> dict[str, Any]:
        # Escaped as every pixclust table writes names, so a path that is not UTF-8 survives JSON.
        def paths(items: Iterable[str]) -> list[str]:
            return [escape_name(path) for path in items]

        return {
            "version": CORRECTIONS_VERSION,
            "names": {name: paths(members) for name, members in self.names.items()},
            "merged": [[paths(anchors) for anchors in group] for group in self.merged],
            "placed": {escape_name(path): paths(anchors) for path, anchors in self.placed.items()},
            "made": {name: paths(members) for name, members in self.made.items()},
            "outlier": paths(self.outlier),
            "exclude": paths(self.exclude),
            "together": [paths(group) for group in self.together],
            "apart": [paths(group) for group in self.apart],
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> Corrections:
        try:
            if not isinstance(data, Mapping) or data.get("version") != CORRECTIONS_VERSION:
                raise TypeError("not a corrections record of version 1")

            def paths(items: object) -> list[str]:
                if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                    raise TypeError("a list of paths is not one")
                return [unescape_name(item) for item in items]

            return cls(
                names={str(name): paths(members) for name, members in data["names"].items()},
                merged=[[paths(anchors) for anchors in group] for group in data["merged"]],
                placed={unescape_name(path): paths(anchors) for path, anchors in data["placed"].items()},
                made={str(name): paths(members) for name, members in data["made"].items()},
                outlier=paths(data["outlier"]),
                exclude=paths(data["exclude"]),
                together=[paths(group) for group in data["together"]],
                apart=[paths(group) for group in data["apart"]],
            )
        except (TypeError, KeyError, AttributeError) as error:
            raise UsageError(
                f"{where} is damaged ({error}); move it away to drop the kept corrections, then run again"
            ) from None

    @classmethod
    def read(cls, path: Path) -> Corrections:
        """The corrections kept at ``path``; none when there is no such file."""
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{path} cannot be read ({error}); move it away, then run again") from None
        return cls.from_dict(data, str(path))

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=True) + "\n")


def _unique(items: Iterable[Any]) -> list[Any]:
    """``items`` in order, each once (lists compared by value)."""
    seen, kept = set(), []
    for item in items:
        key = json.dumps(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


class _Grouping:
    """One cluster name per image, with the moves corrections make on it."""

    def __init__(
        self, paths: Sequence[str], clusters: Sequence[str], distances: np.ndarray, vectors: np.ndarray | None
    ):
        self.paths = list(paths)
        self.row_of = {path: row for row, path in enumerate(self.paths)}
        self.clusters = list(clusters)
        self.distances = np.asarray(distances, dtype=float)
        self.vectors = vectors
        self._unit: np.ndarray | None = None

    def names(self) -> list[str]:
        return list(dict.fromkeys(self.clusters))

    def rows_of(self, name: str) -> list[int]:
        return [row for row, cluster in enumerate(self.clusters) if cluster == name]

    def anchors(self, name: str, leaving: Iterable[int] = ()) -> list[str]:
        """The cluster's most typical images (closest to its centre), those in ``leaving`` aside."""
        leaving = set(leaving)
        rows = [row for row in self.rows_of(name) if row not in leaving]
        rows.sort(key=lambda row: (np.nan_to_num(self.distances[row], nan=np.inf), self.paths[row]))
        return [self.paths[row] for row in rows[:ANCHORS]]

    def holding_most(self, paths: Iterable[str], *, clusters_only: bool = True) -> str | None:
        """The cluster holding most of ``paths`` (those still in the run), the first of them breaking ties."""
        found = [self.clusters[self.row_of[path]] for path in paths if path in self.row_of]
        if clusters_only:
            found = [name for name in found if name not in RESERVED_NAMES]
        if not found:
            return None
        counts = Counter(found)
        best = max(counts.values())
        return next(name for name in found if counts[name] == best)

    def move(self, rows: Iterable[int], name: str) -> None:
        for row in rows:
            self.clusters[row] = name

    def nearest_other(self, row: int, avoid: set[str]) -> str | None:
        """The cluster (none of ``avoid``) whose centre is nearest the image, by cosine of the embeddings."""
        candidates = [name for name in self.names() if name not in avoid and name not in RESERVED_NAMES]
        if not candidates or self.vectors is None:
            return candidates[0] if candidates else None
        if self._unit is None:
            # Once per grouping: a run of 70,000 images pinned apart in many pairs would otherwise normalise each time.
            self._unit = self.vectors / np.maximum(np.linalg.norm(self.vectors, axis=1, keepdims=True), 1e-12)
        centres = np.stack([self._unit[self.rows_of(name)].mean(axis=0) for name in candidates])
        return candidates[int(np.argmax(centres @ self._unit[row]))]

    def pin(self, together: Sequence[Sequence[str]], apart: Sequence[Sequence[str]]) -> None:
        for group in together:
            target = self.holding_most(group, clusters_only=False)
            if target is not None:
                self.move((self.row_of[path] for path in group if path in self.row_of), target)
        for group in apart:
            taken: set[str] = set()
            for path in group:
                if path not in self.row_of:
                    continue
                row = self.row_of[path]
                if self.clusters[row] in taken:
                    other = self.nearest_other(row, taken)
                    if other is not None:
                        self.clusters[row] = other
                taken.add(self.clusters[row])


def apply_edits(
    paths: Sequence[str],
    clusters: Sequence[str],
    distances: np.ndarray,
    edits: Edits,
    *,
    vectors: np.ndarray | None = None,
    source: str | None = None,
) -> tuple[list[str], list[bool], Corrections]:
    """Each image's cluster once ``edits`` are carried out, whether it left the cluster it was in (a move, an
    outlier, an exclusion or a pin; not a rename or a merge), and the corrections the edits amount to.

    ``clusters`` and ``distances`` are clusters.csv's (a cluster name and the distance to its centre per image in
    ``paths``); ``vectors`` (the embeddings) choose where images pinned apart go. Every path and cluster the
    edits name is checked first: one that the run does not have is one ``UsageError``, and nothing is changed.
    """
    grouping = _Grouping(paths, clusters, distances, vectors)
    resolve_path = _path_resolver(grouping.row_of, source)
    existing = [name for name in grouping.names() if name not in RESERVED_NAMES]
    renamed = _check_renames(edits.rename, existing)
    # A name in a merge or a move may be the cluster's name before the rename or after it.
    current = {name: renamed.get(name, name) for name in existing} | {new: new for new in renamed.values()}

    def cluster(name: str, what: str) -> str:
        if name not in current:
            raise UsageError(f"{what} names the cluster {name!r}, which this run does not have; see clusters.csv")
        return current[name]

    merges = [[cluster(name, "a merge") for name in group] for group in edits.merge]
    move_rows = [(resolve_path(move.path), move.to) for move in edits.move]
    outlier_rows = [resolve_path(path) for path in edits.outlier]
    exclude_rows = [resolve_path(path) for path in edits.exclude]
    together = [[grouping.paths[resolve_path(path)] for path in group] for group in edits.together]
    apart = [[grouping.paths[resolve_path(path)] for path in group] for group in edits.apart]

    grouping.clusters = [renamed.get(name, name) for name in clusters]
    corrections = Corrections(names={new: [] for new in renamed.values()}, renamed=dict(renamed))
    for group in merges:
        kept, *others = dict.fromkeys(group)
        corrections.merged_away |= {other: kept for other in others}
        corrections.merged.append([grouping.anchors(name) for name in (kept, *others)])
        grouping.move([row for name in others for row in grouping.rows_of(name)], kept)
        if any(name in corrections.names for name in others):
            corrections.names = {name: rows for name, rows in corrections.names.items() if name not in others}
    carried = list(grouping.clusters)
    moving = {row for row, _ in move_rows}
    anchors_of: dict[str, list[str]] = {}
    for row, to in move_rows:
        if to in current:
            target = current[to]
            if target not in anchors_of:
                anchors_of[target] = grouping.anchors(target, leaving=moving)
            corrections.placed[grouping.paths[row]] = anchors_of[target]
        else:
            target = to
            corrections.made.setdefault(target, []).append(grouping.paths[row])
        grouping.clusters[row] = target
    grouping.move(outlier_rows, OUTLIERS_CLUSTER)
    grouping.move(exclude_rows, EXCLUDED_CLUSTER)
    corrections.outlier = [grouping.paths[row] for row in outlier_rows]
    corrections.exclude = [grouping.paths[row] for row in exclude_rows]
    grouping.pin(together, apart)
    corrections.together, corrections.apart = together, apart
    for name in corrections.names:
        corrections.names[name] = [grouping.paths[row] for row in grouping.rows_of(name)]
    _check_folder_names(grouping.names())
    left = [now != before for now, before in zip(grouping.clusters, carried, strict=True)]
    return grouping.clusters, left, corrections


def _check_renames(rename: Mapping[str, str], existing: Sequence[str]) -> dict[str, str]:
    """The renames that change a name, once every old name exists and no two clusters end with one name."""
    for old in rename:
        if old not in existing:
            raise UsageError(f"a rename names the cluster {old!r}, which this run does not have; see clusters.csv")
    changed = {old: new for old, new in rename.items() if old != new}
    final = [changed.get(name, name) for name in existing]
    clash = next((name for name, count in Counter(final).items() if count > 1), None)
    if clash is not None:
        raise UsageError(f'the renames leave two clusters named {clash!r}; to join them, merge them instead ("merge")')
    return changed


def _check_folder_names(names: Sequence[str]) -> None:
    """Refuse two cluster names that differ only in case: on macOS and Windows they would be one folder."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise UsageError(
                f"the clusters {other!r} and {name!r} differ only in case, which some file systems cannot tell "
                "apart as folders; choose another name, or merge them"
            )


def _path_resolver(row_of: Mapping[str, int], source: str | None):
    """A function from a path in an edits file to its row: clusters.csv's text for it, or a path inside the run's
    image folder relative to it."""

    def resolve(text: str) -> int:
        for candidate in (unescape_name(text), text):
            if candidate in row_of:
                return row_of[candidate]
        if source is not None and not Path(text).is_absolute():
            joined = str(Path(source) / unescape_name(text))
            if joined in row_of:
                return row_of[joined]
        raise UsageError(f"the edits name the image {text!r}, which this run does not hold; see clusters.csv")

    return resolve


def correct(
    paths: Sequence[str],
    clusters: Sequence[str],
    distances: np.ndarray,
    corrections: Corrections,
    *,
    vectors: np.ndarray | None = None,
) -> list[str]:
    """Each image's cluster once kept ``corrections`` are carried out on a clustering that knows nothing of them.

    Images the corrections name but the run no longer holds are passed over.
    """
    grouping = _Grouping(paths, clusters, distances, vectors)
    for group in corrections.merged:
        found = list(dict.fromkeys(filter(None, (grouping.holding_most(anchors) for anchors in group))))
        if len(found) > 1:
            grouping.move([row for name in found[1:] for row in grouping.rows_of(name)], found[0])
    _rename_by_majority(grouping, corrections.names)
    # Made clusters first: an image moved into one later is placed by its images, which must be there by then.
    for name, members in corrections.made.items():
        grouping.move((grouping.row_of[path] for path in members if path in grouping.row_of), name)
    targets = {path: grouping.holding_most(anchors) for path, anchors in corrections.placed.items()}
    for path, target in targets.items():
        if target is not None and path in grouping.row_of:
            grouping.clusters[grouping.row_of[path]] = target
    for name, members in ((OUTLIERS_CLUSTER, corrections.outlier), (EXCLUDED_CLUSTER, corrections.exclude)):
        grouping.move((grouping.row_of[path] for path in members if path in grouping.row_of), name)
    grouping.pin(corrections.together, corrections.apart)
    return grouping.clusters


def _rename_by_majority(grouping: _Grouping, names: Mapping[str, list[str]]) -> None:
    """Give each name to the cluster holding most of its images, largest overlaps first, one name per cluster."""
    overlaps = []
    for name, members in names.items():
        counts = Counter(grouping.clusters[grouping.row_of[path]] for path in members if path in grouping.row_of)
        overlaps += [(count, name, cluster) for cluster, count in counts.items() if cluster not in RESERVED_NAMES]
    given: dict[str, str] = {}
    for _, name, cluster in sorted(overlaps, key=lambda item: (-item[0], item[1], item[2])):
        if name not in given.values() and cluster not in given:
            given[cluster] = name
    # A cluster keeping its automatic name that a person gave to another one would make two of one name.
    taken = set(given.values())
    renamed = {cluster: name for cluster, name in given.items()}
    for cluster in grouping.names():
        if cluster in taken and cluster not in renamed and cluster not in RESERVED_NAMES:
            renamed[cluster] = _free_name(cluster, taken | set(grouping.names()))
    grouping.clusters = [renamed.get(cluster, cluster) for cluster in grouping.clusters]


def _free_name(name: str, taken: set[str]) -> str:
    number = 2
    while f"{name}~{number}" in taken:
        number += 1
    return f"{name}~{number}"


def cluster_ids(clusters: Sequence[str], old_ids: Sequence[int]) -> tuple[np.ndarray, dict[str, int]]:
    """Ids 0..k-1 for the clusters, in the order of the old id most of each one's images had (the larger share
    first, so a cluster keeps its place before one made from a few of its images); pixclust's own groups keep
    theirs (noise and _new -1, _outliers -2, _excluded -3)."""
    special = {OUTLIERS_CLUSTER: OUTLIERS_LABEL, EXCLUDED_CLUSTER: EXCLUDED_LABEL, "noise": -1, "_new": -1}
    origins: dict[str, Counter[int]] = {}
    for name, old in zip(clusters, old_ids, strict=True):
        if name not in special:
            origins.setdefault(name, Counter())[old if old >= 0 else len(clusters)] += 1
    order = sorted(origins, key=lambda name: (*_origin(origins[name]), name))
    ids = {name: number for number, name in enumerate(order)} | special
    return np.array([ids[name] for name in clusters], dtype=np.int64), {
        name: ids[name] for name in dict.fromkeys(clusters)
    }


def _origin(counts: Counter[int]) -> tuple[int, int]:
    """(the old id most images had, minus how many had it): the sort key of a cluster's place."""
    old, count = max(counts.items(), key=lambda item: (item[1], -item[0]))
    return old, -count
