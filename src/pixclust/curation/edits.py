"""edits.json: a person's corrections to a run's clusters, as the report saves them and scripts write them.

Version 1 (keys other than these are ignored, so later versions may add some)::

    {"version": 1,
     "run": "<the run's id, as report.html shows it>",          optional
     "rename": {"cluster_00": "fruit"},
     "merge": [["cluster_01", "cluster_02"]],                   the first one's name is kept
     "move": [{"path": "/images/a.jpg", "to": "cluster_03"}],  an unknown "to" makes a new cluster
     "outlier": ["/images/b.jpg"],                              doesn't belong: to _outliers
     "exclude": ["/images/c.jpg"],                              left out: to _excluded, in no folder
     "pin": {"together": [["/images/d.jpg", "/images/e.jpg"]],
             "apart": [["/images/f.jpg", "/images/g.jpg"]]}}

Paths are the strings clusters.csv holds (a name that is not UTF-8 has its bytes
written ``\\xNN``, as everywhere in pixclust's tables), or paths relative to the
run's image folder. Cluster names are clusters.csv's ``cluster`` column; a name
in ``merge`` or a ``to`` may also be the new name a ``rename`` gives. They are
carried out in that order: renames, merges, moves, outliers, exclusions, pins.

A run's id is ``<run>@<state>``: the run (kept when the folder is clustered
again) and a digest of its clusters.csv, so an edits file made on an earlier
state of the run (clustered again, added to, edited since) is told apart from
one that fits it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixclust.errors import UsageError
from pixclust.names import FORMULA_START

EDITS_VERSION = 1
OUTLIERS_CLUSTER = "_outliers"
EXCLUDED_CLUSTER = "_excluded"
# clusters.csv's cluster_id of the two groups a person makes by marking images (noise and _new are -1).
OUTLIERS_LABEL = -2
EXCLUDED_LABEL = -3
# Names a person may not give a cluster: pixclust's own groups.
RESERVED_NAMES = frozenset({OUTLIERS_CLUSTER, EXCLUDED_CLUSTER, "_new", "noise"})
_STATE_DIGITS = 16


@dataclass(frozen=True)
class Move:
    path: str
    to: str


@dataclass(frozen=True)
class Edits:
    """One edits file, parsed and checked for shape (not yet against a run: :mod:`pixclust.curation.corrections`)."""

    rename: dict[str, str] = field(default_factory=dict)
    merge: list[list[str]] = field(default_factory=list)
    move: list[Move] = field(default_factory=list)
    outlier: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    together: list[list[str]] = field(default_factory=list)
    apart: list[list[str]] = field(default_factory=list)
    run: str | None = None

    @property
    def is_empty(self) -> bool:
        return not any((self.rename, self.merge, self.move, self.outlier, self.exclude, self.together, self.apart))

    def to_dict(self) -> dict[str, Any]:
        """The edits as edits.json holds them."""
        data: dict[str, Any] = {"version": EDITS_VERSION}
        if self.run is not None:
            data["run"] = self.run
        data |= {
            "rename": dict(self.rename),
            "merge": [list(group) for group in self.merge],
            "move": [{"path": move.path, "to": move.to} for move in self.move],
            "outlier": list(self.outlier),
            "exclude": list(self.exclude),
            "pin": {
                "together": [list(group) for group in self.together],
                "apart": [list(group) for group in self.apart],
            },
        }
        return data


def read_edits(path: str | Path) -> tuple[Edits, str]:
    """The edits in the file at ``path`` and the file's digest; anything else is one ``UsageError``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read the edits file {path} ({error.strerror or error}); give an edits.json") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text (byte {error.start}); give an edits.json") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}); give an edits.json") from None
    except RecursionError:
        raise UsageError(f"{path} is nested too deeply to be an edits file; give an edits.json") from None
    return parse_edits(data, where=str(path)), hashlib.sha256(raw).hexdigest()


def parse_edits(data: object, *, where: str = "edits") -> Edits:
    """The :class:`Edits` in ``data`` (parsed JSON), or one ``UsageError`` naming the first thing wrong."""
    if not isinstance(data, Mapping):
        raise UsageError(f"{where} is not an edits file (not a JSON object); see docs/EDITS.md")
    version = data.get("version")
    if version != EDITS_VERSION or isinstance(version, bool):
        raise UsageError(f"{where} has version {version!r}; this pixclust reads edits files of version {EDITS_VERSION}")
    run = data.get("run")
    if run is not None and not isinstance(run, str):
        raise UsageError(f'{where}: "run" must be the run\'s id as text')
    rename = _mapping_of_text(data.get("rename", {}), f'{where}: "rename"')
    for old, new in rename.items():
        _check_name(new, f'{where}: rename of "{old}"')
    merge = [
        _list_of_text(group, f'{where}: each "merge" entry') for group in _list(data.get("merge", []), where, "merge")
    ]
    if any(len(group) < 2 for group in merge):
        raise UsageError(f'{where}: each "merge" entry must list two clusters or more')
    moves = []
    for entry in _list(data.get("move", []), where, "move"):
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("path"), str)
            or not isinstance(entry.get("to"), str)
        ):
            raise UsageError(f'{where}: each "move" entry must be {{"path": "...", "to": "cluster"}}')
        _check_name(entry["to"], f'{where}: move of "{entry["path"]}"')
        moves.append(Move(entry["path"], entry["to"]))
    pin = data.get("pin", {})
    if not isinstance(pin, Mapping):
        raise UsageError(f'{where}: "pin" must be {{"together": [[paths]], "apart": [[paths]]}}')
    pins = {}
    for kind in ("together", "apart"):
        groups = [
            _list_of_text(group, f'{where}: each "pin.{kind}" entry')
            for group in _list(pin.get(kind, []), where, f"pin.{kind}")
        ]
        if any(len(set(group)) < 2 for group in groups):
            raise UsageError(f'{where}: each "pin.{kind}" entry must list two images or more')
        pins[kind] = groups
    return Edits(
        rename=rename,
        merge=merge,
        move=moves,
        outlier=_list_of_text(data.get("outlier", []), f'{where}: "outlier"'),
        exclude=_list_of_text(data.get("exclude", []), f'{where}: "exclude"'),
        together=pins["together"],
        apart=pins["apart"],
        run=run,
    )


def _list(value: object, where: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise UsageError(f'{where}: "{key}" must be a list')
    return value


def _list_of_text(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"{what} must be a list of text")
    return list(value)


def _mapping_of_text(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(item, str) for item in value.values()):
        raise UsageError(f'{what} must map cluster names to new names, such as {{"cluster_00": "fruit"}}')
    return dict(value)


def _check_name(name: str, what: str) -> None:
    """A cluster name becomes a folder name: one non-empty entry, none of pixclust's own groups."""
    if not name.strip() or name in RESERVED_NAMES or "/" in name or "\\" in name or name in (".", ".."):
        raise UsageError(
            f"{what}: {name!r} cannot name a cluster (empty, a path, or one of pixclust's own: "
            f"{', '.join(sorted(RESERVED_NAMES))}); choose another name"
        )
    if any(ord(character) < 0x20 or 0xD800 <= ord(character) < 0xE000 for character in name):
        raise UsageError(f"{what}: {name!r} cannot name a folder (control characters, or a broken escape)")
    if len(name.encode("utf-8")) > 200:
        raise UsageError(f"{what}: {name!r} cannot name a folder (over 200 bytes)")
    if name.startswith(FORMULA_START):
        # clusters.csv holds the name as it is: a spreadsheet would run it.
        raise UsageError(
            f"{what}: {name!r} starts with {name[0]!r}, which spreadsheets read as a formula; choose another"
        )


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_identity(run_id: str | None, clusters_csv: Path | bytes) -> str:
    """``<run>@<state>``: the run's id and a digest of its clusters.csv (the file, or its bytes)."""
    content = clusters_csv if isinstance(clusters_csv, bytes) else clusters_csv.read_bytes()
    return f"{run_id or 'run'}@{hashlib.sha256(content).hexdigest()[:_STATE_DIGITS]}"


def check_run(edits: Edits, identity: str, where: str) -> None:
    """One ``UsageError`` when ``edits`` name another run, or an earlier state of the run whose id is ``identity``."""
    if edits.run is None or edits.run == identity:
        return
    if edits.run.partition("@")[0] != identity.partition("@")[0]:
        raise UsageError(
            f"{where} was made for another run ({edits.run}), not this one ({identity}); "
            "apply it to the run whose report it was saved from"
        )
    raise UsageError(
        f"{where} was made on an earlier state of this run ({edits.run}; it is {identity} now: clustered again, "
        "added to or edited since); open its report.html again, redo the edits there and save them anew"
    )
