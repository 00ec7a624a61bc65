"""The run folder: pixclust's only workspace, and the one place that decides what may change in it.

A folder becomes a run folder when pixclust first writes it: a marker file
says so (with a format version), and a manifest lists what pixclust made in
its trees (``clusters/``, ``plots/``, the hidden staging folders). The rules:

- an existing ``--out`` that is neither empty nor a run folder is refused; a
  folder an earlier pixclust made (``run.json`` and ``embeddings.parquet``, no
  marker) is adopted: the links in its ``clusters/`` and the plots with
  pixclust's names are recorded as pixclust's, and nothing else is touched;
- pixclust replaces or removes only what the manifest lists as its own, and
  never an original that ``--move`` put there; removal unlinks files one by
  one and removes folders only once empty, so nothing it did not list can go;
- a managed name that is a link is refused, so nothing is written or removed
  through one;
- one process writes at a time: an ``flock`` on the lock file, which the
  kernel releases when its holder dies (even by ``kill -9``).

The manifest is checked before it is trusted: every entry must be a relative
path inside the folder, without ``..``, of a known kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pixclust.atomic import DISK_FULL_ERRNOS, permissions_for_new, write_text_atomic
from pixclust.errors import OutputNotWritableError, UsageError
from pixclust.runs.lock import LOCK_FILE, hold_lock
from pixclust.runs.tree import remove_without_following, walk_without_following

MARKER_FILE = ".pixclust-run"
MANIFEST_FILE = ".pixclust-manifest.json"
FORMAT_VERSION = 1

EMBEDDINGS_FILE = "embeddings.parquet"
PARTIAL_DIR = "embeddings.partial"
# The embeddings of 'pixclust embed-shards' as parts, with the index that names them (embedding/part_store.py).
EMBEDDING_PARTS_DIR = "embeddings.parts"
CLUSTERS_CSV = "clusters.csv"
ERRORS_CSV = "errors.csv"
RUN_JSON = "run.json"
CLUSTERS_DIR = "clusters"
VIEWS_DIR = "views"
PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
MAPS_FILE = "maps.parquet"
DUPLICATES_FILE = "duplicates.parquet"
THUMBNAILS_FILE = "thumbnails.parquet"
MOVES_JOURNAL = "moves.jsonl"
DUPLICATES_CSV = "duplicates.csv"
DUPLICATE_COPIES_DIR = "duplicate_copies"
CLUSTER_MODEL_FILE = "cluster_model.npz"
ADDED_DUPLICATES_CSV = "added_duplicates.csv"
CORRECTIONS_FILE = "corrections.json"
CLUSTER_TABLE_DIR = "cluster_table"
# The cluster table's summary (sizes, sample, k scan, timings), beside its parts.
CLUSTER_TABLE_SUMMARY = "summary.json"

# Every name pixclust writes at the top of a run folder; none of them may be a link.
MANAGED_NAMES = (
    MARKER_FILE,
    MANIFEST_FILE,
    LOCK_FILE,
    EMBEDDINGS_FILE,
    PARTIAL_DIR,
    EMBEDDING_PARTS_DIR,
    CLUSTERS_CSV,
    ERRORS_CSV,
    RUN_JSON,
    CLUSTERS_DIR,
    VIEWS_DIR,
    PLOTS_DIR,
    REPORT_FILE,
    MAPS_FILE,
    DUPLICATES_FILE,
    THUMBNAILS_FILE,
    MOVES_JOURNAL,
    DUPLICATES_CSV,
    DUPLICATE_COPIES_DIR,
    CLUSTER_MODEL_FILE,
    ADDED_DUPLICATES_CSV,
    CORRECTIONS_FILE,
    CLUSTER_TABLE_DIR,
)

# What a manifest entry is. "moved" is a user's original that --move put here: never replaced or removed.
FILE, LINK, COPY, MOVED, DIR, TREE = "file", "link", "copy", "moved", "dir", "tree"
_KINDS = {FILE, LINK, COPY, MOVED, DIR, TREE}
_REMOVABLE = {FILE, LINK, COPY, DIR}
_STAGING_PREFIX = ".pixclust-staging-"

# The plots an earlier pixclust wrote (report.build.make_figures' stems and the montages), adopted by name.
_EARLIER_PLOT = re.compile(r"(pca_variance|elbow|silhouette_k|modularity_k|silhouette_samples|map_\w+|montage_.+)\.png")

_BOOTSTRAP_LEFTOVER = re.compile(
    re.escape(LOCK_FILE) + "|" + "|".join(rf"\.{re.escape(name)}\.[^/]*\.tmp" for name in (MARKER_FILE, MANIFEST_FILE))
)

# flock belongs to an open file description, so a second lock of the same folder by this process (the report
# built inside a cluster run) would block itself; and two objects for one folder would each save their own
# manifest. So the folder this process holds is kept here, with its lock's descriptor, and shared.
_held: dict[str, tuple[RunFolder, int]] = {}


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder pixclust made (marker), or one an earlier pixclust made that it would adopt."""
    # os.path.isfile, not Path.is_file: a folder the user cannot read is simply not a run folder.
    return os.path.isfile(os.path.join(path, MARKER_FILE)) or _made_by_earlier_pixclust(Path(path))


def is_sharded_run(path: str | Path) -> bool:
    """Whether ``path`` holds a run of ``pixclust cluster-shards`` (a cluster table) and not one of ``pixclust cluster``."""
    return os.path.isfile(os.path.join(path, CLUSTER_TABLE_DIR, CLUSTER_TABLE_SUMMARY)) and not os.path.lexists(
        os.path.join(path, RUN_JSON)
    )


def not_a_finished_run(run_dir: str | Path, command: str) -> str:
    """Why ``pixclust COMMAND`` cannot work on ``run_dir``, which holds no finished run of ``pixclust cluster``."""
    if is_sharded_run(run_dir):
        return (
            f"{run_dir} is a run of 'pixclust cluster-shards'; 'pixclust {command}' works on runs of "
            f"'pixclust cluster' (a sharded run is clustered again with cluster-shards)"
        )
    return f"{run_dir} is not a finished run; make one with 'pixclust cluster FOLDER --out {run_dir}'"


def _made_by_earlier_pixclust(path: Path) -> bool:
    return os.path.isfile(path / RUN_JSON) and os.path.isfile(path / EMBEDDINGS_FILE)


class RunFolder:
    """A run folder on disk: where its files are, what pixclust owns in it, and its writer's lock.

    Build one with :meth:`open`; write only inside ``with folder.writing():``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Relative name -> kind, for what pixclust made in the folder's trees; a name not here is not pixclust's.
        self._entries: dict[str, str] = {}

    @classmethod
    def open_apart_from(cls, images: str | Path, path: str | Path) -> RunFolder:
        """The run folder at ``path`` for images under ``images``, once neither lies inside the other (links resolved)."""
        if not os.path.exists(images):
            raise UsageError(f"{images} does not exist; give a folder (or file) of images")
        run_real, images_real = os.path.realpath(path), os.path.realpath(images)
        if os.path.isdir(images) and _is_within(run_real, images_real):
            raise UsageError(
                f"{path} is inside the image folder {images}; pixclust never writes into your image folders, "
                "so choose a folder outside it"
            )
        if _is_within(images_real, run_real):
            raise UsageError(
                f"the image folder {images} is inside the run folder {path}, whose files pixclust replaces; "
                "choose a folder outside it"
            )
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> RunFolder:
        """The run folder at ``path`` (its links resolved: the user named it), checked but not yet written.

        Raises :class:`UsageError` for a folder that is not a run folder and not
        empty, and for a managed name that is a link.
        """
        root = Path(os.path.realpath(path))
        # os.path's tests, not Path's: a folder the user may not search is "not there", not a traceback.
        if os.path.exists(root) and not os.path.isdir(root):
            raise UsageError(f"{path} is a file, not a folder; give a folder for the run")
        # With a lock file there, a run may be making it a run folder right now; writing() checks under the lock.
        unsettled = os.path.exists(root / LOCK_FILE)
        if not create and not unsettled and not is_run_folder(root):
            raise UsageError(f"{path} is not a pixclust run folder; run 'pixclust cluster FOLDER --out {path}' first")
        if os.path.isdir(root) and not unsettled:
            _refuse_foreign(root)
        if str(root) in _held:
            return _held[str(root)][0]
        folder = cls(root)
        folder._refuse_links()
        return folder

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # -- the lock ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[RunFolder]:
        """Hold the folder's writer lock, make it a run folder (marker, adoption), and yield it.

        Re-entrant within one process: an inner ``writing()`` of the same folder shares the outer one's lock.
        """
        if _held.get(str(self.root), (None, 0))[0] is self:
            yield self
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise  # the CLI's one line for a full disk
            raise OutputNotWritableError(
                f"cannot create the run folder {self.root} ({error.strerror or error}); choose another --out"
            ) from error
        descriptor = hold_lock(self.root / LOCK_FILE)
        try:
            _held[str(self.root)] = (self, descriptor)
            self._refuse_links()
            self._load_or_initialise()
            yield self
        finally:
            _held.pop(str(self.root), None)
            os.close(descriptor)  # closing the only descriptor releases the flock

    def _require_lock(self) -> None:
        if _held.get(str(self.root), (None, 0))[0] is not self:
            raise RuntimeError(f"{self.root} is written without its lock; use RunFolder.writing()")

    # -- what pixclust owns ---------------------------------------------------------------------------

    def _refuse_links(self) -> None:
        for name in MANAGED_NAMES:
            if os.path.islink(self.root / name):
                raise UsageError(
                    f"{self.root / name} is a link; pixclust never writes or removes through a link, so remove the link "
                    "or choose another --out"
                )

    def _load_or_initialise(self) -> None:
        _refuse_foreign(self.root)
        marker = self.root / MARKER_FILE
        if marker.is_file():
            self._check_marker(marker)
            if os.path.lexists(self.root / MANIFEST_FILE):
                self._entries = self._read_manifest()
                self._remove_leftover_staging()
            else:
                # Deleted (or never written, by a kill): what is surely pixclust's is taken back, as on adoption.
                self._entries = dict(self._adopted_entries())
                self._save_manifest()
            return
        if _made_by_earlier_pixclust(self.root):
            self._entries = dict(self._adopted_entries())
        # The marker first: a kill before the manifest is written leaves a run folder whose next run adopts it.
        write_text_atomic(marker, json.dumps({"pixclust_run_folder": FORMAT_VERSION}) + "\n")
        self._save_manifest()

    def _check_marker(self, marker: Path) -> None:
        try:
            version = json.loads(marker.read_text(encoding="utf-8")).get("pixclust_run_folder")
        except (ValueError, AttributeError, OSError):
            version = None
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UsageError(
                f"{marker} is damaged or from a newer pixclust; use that pixclust, or choose another --out"
            )

    def _adopted_entries(self) -> Iterator[tuple[str, str]]:
        """The links in clusters/ and the plots pixclust names; regular files in clusters/ may be moved originals, so not these."""
        clusters = self.root / CLUSTERS_DIR
        if clusters.is_dir():
            for folder in sorted(os.scandir(clusters), key=lambda entry: entry.name):
                if folder.is_dir(follow_symlinks=False):
                    yield f"{CLUSTERS_DIR}/{folder.name}", DIR
                    for entry in os.scandir(folder.path):
                        if entry.is_symlink():
                            yield f"{CLUSTERS_DIR}/{folder.name}/{entry.name}", LINK
        plots = self.root / PLOTS_DIR
        if plots.is_dir():
            for entry in os.scandir(plots):
                if _EARLIER_PLOT.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    yield f"{PLOTS_DIR}/{entry.name}", FILE

    def _read_manifest(self) -> dict[str, str]:
        manifest = self.root / MANIFEST_FILE
        try:
            record = json.loads(manifest.read_text(encoding="utf-8", errors="surrogateescape"))
            entries = record["entries"]
            if record.get("format") != FORMAT_VERSION or not isinstance(entries, dict):
                raise ValueError("unknown format")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(
                f"{manifest} is missing or damaged ({error}); pixclust cannot tell its files from yours there, so choose another --out"
            ) from error
        for name, kind in entries.items():
            staging = kind == TREE and name.startswith(_STAGING_PREFIX) and "/" not in name
            if kind not in _KINDS or not _is_inside_name(name) or (kind == TREE) != staging:
                raise UsageError(
                    f"{manifest} lists {name!r} as {kind!r}, which pixclust never writes; choose another --out"
                )
        return dict(entries)

    def _save_manifest(self) -> None:
        text = json.dumps({"format": FORMAT_VERSION, "entries": dict(sorted(self._entries.items()))}, ensure_ascii=True)
        write_text_atomic(self.root / MANIFEST_FILE, text + "\n")

    def record(self, entries: Iterable[tuple[str, str]]) -> None:
        """Add (relative name, kind) entries to the manifest, before the files are made (a kill leaves them listed, not lost)."""
        self._require_lock()
        self._entries.update(entries)
        self._save_manifest()

    def claim_files(self, names: Iterable[str]) -> None:
        """Record files about to be written; one that exists and is not pixclust's is refused, not overwritten."""
        names = list(names)
        for name in names:
            if self._entries.get(name) != FILE and os.path.lexists(self.root / name):
                raise UsageError(f"{self.root / name} was not made by pixclust; move it away, then run again")
        parents = {name.rsplit("/", 1)[0] for name in names if "/" in name}
        self.record([*((parent, DIR) for parent in parents), *((name, FILE) for name in names)])

    def files_under(self, tree: str, kind: str = FILE) -> list[str]:
        """The files of ``kind`` the manifest lists under ``tree``, by name relative to the run folder."""
        return sorted(name for name, listed in self._entries.items() if listed == kind and name.startswith(tree + "/"))

    def moved_originals(self) -> list[str]:
        return sorted(name for name, kind in self._entries.items() if kind == MOVED)

    def release_moved(self, tree: str) -> None:
        """Forget the moved originals under ``tree`` that are no longer there (a restore put them back)."""
        self._require_lock()
        gone = [
            name
            for name in self.moved_originals()
            if name.startswith(tree + "/") and not os.path.lexists(self.root / name)
        ]
        for name in gone:
            del self._entries[name]
        self._save_manifest()

    def check_replaceable(self, tree: str) -> None:
        """Raise unless every entry under ``tree`` is pixclust's and may go (no user file, no moved original)."""
        top = self.root / tree
        if not top.exists():
            return
        moved = [name for name in self.moved_originals() if name.startswith(tree + "/")]
        if moved:
            raise UsageError(
                f"{self.root} holds images that --move put in {tree}/ (e.g. {moved[0]}); pixclust never replaces them, "
                "so choose another --out"
            )
        for name, is_dir in walk_without_following(top, tree):
            kind = self._entries.get(name)
            if kind not in _REMOVABLE or (kind == LINK) != os.path.islink(self.root / name) or (kind == DIR) != is_dir:
                raise UsageError(f"{self.root / name} was not made by pixclust; move it out of {top}, then run again")

    def remove_tree(self, tree: str) -> None:
        """Remove ``tree`` (checked by :meth:`check_replaceable` first) entry by entry; what is not listed stays."""
        self._require_lock()
        self.check_replaceable(tree)
        top = self.root / tree
        if top.exists():
            retired = self._staging_dir()
            os.replace(top, retired)
            self._forget_under(tree)
            self._remove_staging(retired)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new hidden folder pixclust owns whole, removed again unless :meth:`swap_in` took it."""
        self._require_lock()
        staging = self._staging_dir()
        try:
            yield staging
        finally:
            if staging.exists():
                self._remove_staging(staging)

    def swap_in(self, staging: Path, tree: str, entries: Iterable[tuple[str, str]]) -> None:
        """Make ``staging`` the new ``tree`` with these entries (names under ``tree``); at every moment one whole version exists."""
        entries = [(tree, DIR), *entries]
        self.check_replaceable(tree)
        # Listed before the swap, beside the old ones: a kill at any point leaves every entry on disk listed.
        self.record(entries)
        top = self.root / tree
        retired = None
        if top.exists():
            retired = self._staging_dir()
            os.replace(top, retired)
        os.replace(staging, top)
        self._forget_under(tree)
        self._entries.pop(staging.name, None)
        self.record(entries)
        if retired is not None:
            self._remove_staging(retired)

    def remove_file(self, name: str) -> None:
        """Remove one file the manifest lists as pixclust's own; anything else stays."""
        self._require_lock()
        if self._entries.get(name) not in (FILE, COPY, LINK):
            return
        path = self.root / name
        if os.path.isdir(path) and not os.path.islink(path):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        del self._entries[name]
        self._save_manifest()

    def remove_managed_file(self, name: str) -> None:
        """Remove one of the files pixclust writes at the top of every run folder (``MANAGED_NAMES``), which
        it replaces at will like ``clusters.csv``; a link or folder of that name, or any other name, stays."""
        self._require_lock()
        if name not in MANAGED_NAMES:
            return
        path = self.root / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)

    def _staging_dir(self) -> Path:
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        os.chmod(staging, permissions_for_new(0o777))
        self.record([(staging.name, TREE)])
        return staging

    def _remove_staging(self, staging: Path) -> None:
        """Remove a staging folder pixclust made, without following any link inside it."""
        remove_without_following(staging)
        self._entries.pop(staging.name, None)
        self._save_manifest()

    def _remove_leftover_staging(self) -> None:
        for name, kind in list(self._entries.items()):
            if kind == TREE and name.startswith(_STAGING_PREFIX):
                path = self.root / name
                if path.is_dir() and not path.is_symlink():
                    remove_without_following(path)
                self._entries.pop(name)
        self._save_manifest()

    def _forget_under(self, tree: str) -> None:
        prefix = tree + "/"
        self._entries = {
            name: kind for name, kind in self._entries.items() if name != tree and not name.startswith(prefix)
        }


def _refuse_foreign(root: Path) -> None:
    """Refuse a folder that holds something and is not a run folder.

    What a run killed while making it a run folder leaves (the lock file, a half-written marker or
    manifest under atomic_path's temporary name) does not count.
    """
    try:
        names = [entry.name for entry in os.scandir(root)]
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot read the run folder {root} ({error.strerror or error}); choose another --out"
        ) from error
    if not is_run_folder(root) and any(not _BOOTSTRAP_LEFTOVER.fullmatch(name) for name in names):
        raise UsageError(
            f"{root} is not empty and is not a pixclust run folder; pixclust writes only into a new or empty folder "
            "or one it made, so choose another --out"
        )


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_inside_name(name: object) -> bool:
    """A manifest name must stay inside the folder: relative, no '..', no empty parts."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))
