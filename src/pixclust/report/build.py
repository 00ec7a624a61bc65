"""Build a run folder's pictures: ``plots/*.png`` and one self-contained ``report.html``.

Everything is read back from the run folder (embeddings.parquet,
clusters.csv, errors.csv, run.json), so ``pixclust report RUN`` rebuilds
exactly what ``pixclust cluster`` made. Maps are cached in ``maps.parquet``,
thumbnails in ``thumbnails.parquet`` and duplicate groups in
``duplicates.parquet``; a rebuild recomputes none of them.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pixclust.atomic import atomic_path, write_text_atomic
from pixclust.clustering.maps import DEFAULT_MAPS, check_map_methods, map_basis, map_coordinates
from pixclust.curation.export import cluster_names
from pixclust.curation.search import (
    DEFAULT_COLOUR_TOLERANCE,
    DEFAULT_DUPLICATE_THRESHOLD,
    DuplicateGroup,
    DuplicateReport,
    find_duplicates,
)
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.store import EmbeddingStore, read_table_or_none
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.names import escape_name, from_cell
from pixclust.progress import progress_bar, quietly
from pixclust.report import plots
from pixclust.report.figures import contact_sheet
from pixclust.report.thumbnails import THUMB_SIDE, load_thumbnails
from pixclust.runs.folder import (
    CLUSTERS_CSV,
    DUPLICATES_FILE,
    EMBEDDINGS_FILE,
    ERRORS_CSV,
    MAPS_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    RUN_JSON,
    RunFolder,
)
from pixclust.runs.record import RunRecord

MONTAGE_SIZE = 32
_PLACEHOLDER = re.compile(r"\{\{(TITLE|CSS|PLOTLY|DATA|APP)\}\}")
_DUPLICATES_SCHEMA = pa.schema(
    [("rows", pa.list_(pa.int64())), ("keeper", pa.int64()), ("kind", pa.string()), ("min_similarity", pa.float64())]
)


@dataclass
class RunView:
    """What the report needs from a finished run, rows in embeddings order."""

    run_dir: Path
    record: RunRecord
    embeddings: Embeddings
    labels: np.ndarray
    distances: np.ndarray
    silhouettes: np.ndarray
    errors: list[SkippedFile]

    @property
    def paths(self) -> list[str]:
        return self.embeddings.paths

    @property
    def hashes(self) -> list[str]:
        return self.embeddings.content_hashes

    @property
    def vectors(self) -> np.ndarray:
        return self.embeddings.vectors

    @property
    def names(self) -> dict[int, str]:
        return cluster_names(self.labels)

    def members(self, label: int) -> np.ndarray:
        """Rows of one cluster, most typical (closest to the centre) first."""
        rows = np.flatnonzero(self.labels == label)
        return rows[np.argsort(np.nan_to_num(self.distances[rows], nan=np.inf), kind="stable")]


def load_run(run_dir: str | Path, record: RunRecord | None = None, embeddings: Embeddings | None = None) -> RunView:
    """The run folder's embeddings, clusters, errors and record; ``embeddings``, when the caller holds them, are not read again."""
    run_dir = Path(run_dir)
    for needed in (EMBEDDINGS_FILE, CLUSTERS_CSV):
        if not (run_dir / needed).is_file():
            raise UsageError(f"{run_dir} has no {needed}; run 'pixclust cluster FOLDER --out {run_dir}' first")
    if embeddings is None:
        embeddings = EmbeddingStore(run_dir).load()
    with open(run_dir / CLUSTERS_CSV, newline="", encoding="utf-8") as stream:
        rows = {from_cell(row["path"]): row for row in csv.DictReader(stream)}
    missing = [path for path in embeddings.paths if path not in rows]
    if missing:
        raise UsageError(
            f"{run_dir / CLUSTERS_CSV} does not list {missing[0]}; re-run pixclust cluster for this folder"
        )
    ordered = [rows[path] for path in embeddings.paths]
    errors: list[SkippedFile] = []
    if (run_dir / ERRORS_CSV).is_file():
        with open(run_dir / ERRORS_CSV, newline="", encoding="utf-8") as stream:
            errors = [
                SkippedFile(*(from_cell(row[name]) for name in ("path", "reason", "detail")))
                for row in csv.DictReader(stream)
            ]
    if record is None:
        # A run that stopped before run.json was written still has its vectors and clusters to show.
        record = RunRecord.read(run_dir / RUN_JSON) if (run_dir / RUN_JSON).is_file() else RunRecord(model={})
    return RunView(
        run_dir=run_dir,
        record=record,
        embeddings=embeddings,
        labels=np.array([int(row["cluster_id"]) for row in ordered], dtype=np.int64),
        distances=np.array([_float(row["distance"]) for row in ordered]),
        silhouettes=np.array([_float(row.get("silhouette", "")) for row in ordered]),
        errors=errors,
    )


def _float(text: str) -> float:
    return float(text) if text else float("nan")


def load_maps(view: RunView, methods: tuple[str, ...], *, random_state: int = 0) -> dict[str, dict[int, np.ndarray]]:
    """2-D and 3-D coordinates per map method, from ``maps.parquet`` when it matches these embeddings."""
    fingerprint = _fingerprint(view)
    cache_file = view.run_dir / MAPS_FILE
    cached = _read_maps(cache_file, fingerprint, len(view.paths))
    wanted = [(method, dims) for method in methods for dims in (2, 3)]
    missing = [key for key in wanted if key not in cached]
    if missing:
        with progress_bar("maps", len(missing), unit="maps") as advance:
            basis = map_basis(view.vectors, random_state=random_state)
            for method, dims in missing:
                cached[(method, dims)] = map_coordinates(basis, method, n_components=dims, random_state=random_state)
                advance(1)
        _write_maps(cache_file, fingerprint, cached)
    maps: dict[str, dict[int, np.ndarray]] = {}
    for method, dims in wanted:
        maps.setdefault(method, {})[dims] = cached[(method, dims)]
    return maps


def _fingerprint(view: RunView, *settings: str) -> str:
    """Names the embeddings (model, and content in row order) and the settings a cache was made from."""
    model_id = view.record.model_id
    return hashlib.sha256("\n".join([model_id, *view.hashes, *settings]).encode()).hexdigest()


def _read_maps(cache_file: Path, fingerprint: str, n: int) -> dict[tuple[str, int], np.ndarray]:
    table = read_table_or_none(cache_file)
    if table is None:
        return {}
    metadata = table.schema.metadata or {}
    if metadata.get(b"fingerprint", b"").decode() != fingerprint or table.num_rows != n:
        return {}
    found: dict[tuple[str, int], np.ndarray] = {}
    for name in table.column_names:
        method, dims = name.rsplit("_", 1)
        dims_count = int(dims.removesuffix("d"))
        flat = table.column(name).combine_chunks().flatten().to_numpy()
        found[(method, dims_count)] = flat.reshape(-1, dims_count).astype(np.float32)
    return found


def _write_maps(cache_file: Path, fingerprint: str, maps: dict[tuple[str, int], np.ndarray]) -> None:
    columns = {
        f"{method}_{dims}d": pa.FixedSizeListArray.from_arrays(pa.array(coords.reshape(-1)), dims)
        for (method, dims), coords in maps.items()
    }
    table = pa.table(columns).replace_schema_metadata({"fingerprint": fingerprint})
    with atomic_path(cache_file) as tmp:
        pq.write_table(table, tmp)


def load_duplicates(view: RunView, *, threshold: float = DEFAULT_DUPLICATE_THRESHOLD) -> DuplicateReport:
    """Exact and near-duplicate groups, from ``duplicates.parquet`` when it matches these embeddings."""
    # The colour check is part of the answer, so a change to its tolerance must not reuse old groups.
    fingerprint = _fingerprint(view, f"duplicates {threshold} {DEFAULT_COLOUR_TOLERANCE}")
    cache_file = view.run_dir / DUPLICATES_FILE
    cached = _read_duplicates(cache_file, fingerprint)
    if cached is not None:
        return cached
    # One step, so a long search over many images still shows that it is running and for how long.
    with progress_bar("duplicates", 1, unit="searches") as advance:
        found = find_duplicates(view.embeddings, threshold=threshold)
        advance(1)
    _write_duplicates(cache_file, fingerprint, found)
    return found


def _read_duplicates(cache_file: Path, fingerprint: str) -> DuplicateReport | None:
    table = read_table_or_none(cache_file)
    if table is None:
        return None
    metadata = table.schema.metadata or {}
    if metadata.get(b"fingerprint", b"").decode() != fingerprint or table.schema.names != _DUPLICATES_SCHEMA.names:
        return None
    columns = (table.column(name).to_pylist() for name in _DUPLICATES_SCHEMA.names)
    groups = [DuplicateGroup(tuple(rows), keeper, kind, sim) for rows, keeper, kind, sim in zip(*columns, strict=True)]
    return DuplicateReport(groups, **json.loads(metadata[b"counts"]))


def _write_duplicates(cache_file: Path, fingerprint: str, found: DuplicateReport) -> None:
    table = pa.table(
        {
            "rows": [list(group.rows) for group in found.groups],
            "keeper": [group.keeper for group in found.groups],
            "kind": [group.kind for group in found.groups],
            "min_similarity": [group.min_similarity for group in found.groups],
        },
        schema=_DUPLICATES_SCHEMA,
    )
    counts = {name: value for name, value in vars(found).items() if name != "groups"}
    with atomic_path(cache_file) as tmp:
        pq.write_table(table.replace_schema_metadata({"fingerprint": fingerprint, "counts": json.dumps(counts)}), tmp)


def make_figures(view: RunView, maps: dict[str, dict[int, np.ndarray]]) -> dict[str, Any]:
    """Every static figure for the run, by file stem."""
    names = view.names
    clustering = view.record.clustering
    figures: dict[str, Any] = {}
    ratio = clustering.get("pca_explained_variance_ratio")
    if ratio:
        figures["pca_variance"] = plots.variance_figure(np.asarray(ratio))
    scan = clustering.get("k_scan")
    if scan:
        chosen = scan["chosen_k"]
        figures["elbow"] = plots.elbow_figure(scan["k"], scan["inertia"], scan["elbow_k"], chosen)
        figures["silhouette_k"] = plots.k_scan_figure(scan["k"], scan["silhouette"], chosen, "silhouette")
        if scan.get("modularity"):
            figures["modularity_k"] = plots.k_scan_figure(scan["k"], scan["modularity"], chosen, "modularity")
    if np.isfinite(view.silhouettes).any():
        figures["silhouette_samples"] = plots.silhouette_samples_figure(view.silhouettes, view.labels, names)
    for method, by_dims in maps.items():
        figures[f"map_{method}"] = plots.map_figure(by_dims[2], view.labels, names, f"{method.upper()} map, by cluster")
    return figures


def build_report(
    run_dir: str | Path,
    *,
    maps: tuple[str, ...] | list[str] = DEFAULT_MAPS,
    record: RunRecord | None = None,
    embeddings: Embeddings | None = None,
    html: bool = True,
    random_state: int = 0,
    quiet: bool = False,
) -> Path:
    """Write ``plots/*.png`` (and ``report.html`` unless ``html=False``); returns the report's path.

    ``embeddings`` are the run folder's own, passed by a caller that holds them so
    that a second copy (360 MB at 70,000 images) is not read from disk.
    """
    with quietly(quiet):
        methods = check_map_methods(list(maps))
        with RunFolder.open(run_dir, create=False).writing() as folder:
            return _build_report(folder, methods, record, embeddings, html=html, random_state=random_state)


def _build_report(
    folder: RunFolder,
    methods: tuple[str, ...],
    record: RunRecord | None,
    embeddings: Embeddings | None,
    *,
    html: bool,
    random_state: int,
) -> Path:
    view = load_run(folder.root, record, embeddings)
    coords = load_maps(view, methods, random_state=random_state)
    thumbnails = load_thumbnails(view.run_dir, view.paths, view.hashes)
    duplicates = load_duplicates(view)
    plot_dir = view.run_dir / PLOTS_DIR
    pngs = {stem: plots.save_png(figure) for stem, figure in make_figures(view, coords).items()}
    written = {f"{stem}.png" for stem in pngs} | {f"montage_{name}.png" for name in view.names.values()}
    folder.claim_files([f"{PLOTS_DIR}/{name}" for name in sorted(written)])
    for label, name in view.names.items():
        typical = [thumbnails.get(view.hashes[row]) for row in view.members(label)[:MONTAGE_SIZE]]
        sheet = contact_sheet(
            [None if data is None else Image.open(io.BytesIO(data)) for data in typical], tile=THUMB_SIDE
        )
        with atomic_path(plot_dir / f"montage_{name}.png") as tmp:
            sheet.save(tmp, format="PNG")
    for stem, png in pngs.items():
        with atomic_path(plot_dir / f"{stem}.png") as tmp:
            tmp.write_bytes(png)
    # A montage of a cluster that no longer exists (another k) or a map no longer asked for would mislead;
    # the run folder removes only plots it lists as pixclust's.
    for stale in folder.files_under(PLOTS_DIR):
        if stale.removeprefix(f"{PLOTS_DIR}/") not in written:
            folder.remove_file(stale)
    report = view.run_dir / REPORT_FILE
    if html:
        write_text_atomic(report, render_html(view, coords, thumbnails, pngs, duplicates))
    return report


def render_html(
    view: RunView,
    maps: dict[str, dict[int, np.ndarray]],
    thumbnails: dict[str, bytes],
    pngs: dict[str, bytes],
    duplicates: DuplicateReport,
) -> str:
    """The whole report as one HTML string: styles, Plotly, data and behaviour inlined."""
    assets = resources.files("pixclust.report") / "assets"
    payload = json.dumps(_report_data(view, maps, thumbnails, pngs, duplicates), separators=(",", ":"))
    replacements = {
        "TITLE": _html_escape(_title(view)),
        "CSS": (assets / "report.css").read_text(encoding="utf-8"),
        "PLOTLY": _plotly_js(),
        # Inside a script element "</script" ends it and "<!--" changes how the rest is parsed, so no
        # "<" may stay; these characters occur only inside JSON strings, where the \u form means the same.
        "DATA": payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
        "APP": (assets / "report.js").read_text(encoding="utf-8"),
    }
    page = (assets / "report.html").read_text(encoding="utf-8")
    # One pass: a placeholder's text inside an inserted value (a file named "{{APP}}.png") stays text.
    return _PLACEHOLDER.sub(lambda found: replacements[found.group(1)], page)


def _plotly_js() -> str:
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _title(view: RunView) -> str:
    source = view.record.source or str(view.run_dir)
    return f"pixclust: {escape_name(Path(source).name or source)}"


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _report_data(
    view: RunView,
    maps: dict[str, dict[int, np.ndarray]],
    thumbnails: dict[str, bytes],
    pngs: dict[str, bytes],
    duplicates: DuplicateReport,
) -> dict[str, Any]:
    names = view.names
    ids = [label for label in names if label >= 0] + ([-1] if -1 in names else [])
    colours = dict(zip([label for label in ids if label >= 0], plots.cluster_colours(len(ids)), strict=False))
    unique_thumbs = {
        digest: index for index, digest in enumerate(dict.fromkeys(h for h in view.hashes if h in thumbnails))
    }
    return {
        "title": _title(view),
        "summary": _summary_rows(view, duplicates),
        "clusters": [
            {
                "id": label,
                "name": names[label],
                "size": int(np.sum(view.labels == label)),
                "colour": colours.get(label, "#999999"),
                "members": view.members(label).tolist(),
            }
            for label in ids
        ],
        "points": {
            # Escaped (pixclust.names): a name that is not UTF-8 shows its bytes as \xNN rather than as "�".
            "name": [escape_name(Path(path).name) for path in view.paths],
            "path": [escape_name(path) for path in view.paths],
            "cluster": view.labels.tolist(),
            "thumb": [unique_thumbs.get(digest, -1) for digest in view.hashes],
        },
        "thumbs": [_data_uri("image/webp", thumbnails[digest]) for digest in unique_thumbs],
        "maps": {
            method: {f"{dims}d": np.round(coords, 4).T.tolist() for dims, coords in by_dims.items()}
            for method, by_dims in maps.items()
        },
        "plots": {stem: _data_uri("image/png", png) for stem, png in pngs.items() if not stem.startswith("map_")},
        "duplicates": _duplicates_data(view, duplicates),
        "errors": [[escape_name(text) for text in (item.path, item.reason, item.detail)] for item in view.errors],
    }


def _duplicates_data(view: RunView, duplicates: DuplicateReport) -> dict[str, Any]:
    """Groups with the keeper first; rows index ``points``, so the page reuses their thumbnails."""
    threshold = f"cosine ≥ {duplicates.threshold:.2f}"
    if duplicates.groups:
        headline = (
            f"{_count(len(duplicates.groups), 'group')}, {_count(duplicates.n_redundant, 'redundant image')}: "
            f"exact copies, and images at {threshold} with the same colours. "
            "The first of each group (the most pixels) is the one to keep; click an image to see its cluster."
        )
    else:
        headline = f"No duplicates found at {threshold}."
    groups = []
    for group in duplicates.groups:
        rows = [group.keeper, *(row for row in group.rows if row != group.keeper)]
        groups.append(
            {
                "rows": rows,
                "keeper": group.keeper,
                "kind": group.kind,
                "similarity": round(group.min_similarity, 4),
                "sizes": view.embeddings.image_sizes[rows].tolist(),
            }
        )
    return {"threshold": duplicates.threshold, "headline": headline, "groups": groups}


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _summary_rows(view: RunView, duplicates: DuplicateReport) -> list[list[str]]:
    record = view.record
    counts, clustering, model = record.counts, record.clustering, record.model
    rows = [
        ["images", f"{len(view.paths):,}"],
        ["clusters", str(len([label for label in view.names if label >= 0]))],
        ["files not used", f"{len(view.errors):,}"],
        ["duplicate groups", f"{len(duplicates.groups):,} ({_count(duplicates.n_redundant, 'redundant image')})"],
        ["model", str(model.get("model", "?"))],
        ["weights", str(model.get("weights", "?"))],
        ["method", f"{clustering.get('reduce', '?')} → {clustering.get('method', '?')}"],
    ]
    silhouette = clustering.get("silhouette")
    if silhouette is not None:
        rows.append(["silhouette", f"{silhouette:.3f}"])
    choice = clustering.get("pipeline")
    if choice:
        stabilities = ", ".join(
            f"{name} {score['stability']:.2f}"
            for name, score in choice["candidates"].items()
            if score["stability"] is not None
        )
        rows.append(
            ["features chosen", choice["representation"] + (f" (stability: {stabilities})" if stabilities else "")]
        )
        if choice.get("refined_on"):
            agreement = choice.get("view_agreement")
            agreed = "" if agreement is None else f"; views' agreement {agreement:.2f}"
            rows.append(
                ["refined on", f"{choice['refined_on']} ({choice['refined_share']:.1%} of images moved{agreed})"]
            )
    scan = clustering.get("k_scan")
    if scan:
        rows.append([f"k by {scan['criterion']} / elbow", f"{scan['chosen_k']} / {scan['elbow_k'] or 'none'}"])
    scores = record.scores
    if scores:
        rows.append(["ACC / NMI / ARI", " / ".join(f"{scores[key]:.3f}" for key in ("acc", "nmi", "ari"))])
    if counts:
        rows.append(["embedded / reused", f"{counts.get('extracted', 0):,} / {counts.get('reused', 0):,}"])
    for name, seconds in record.timings_s.items():
        rows.append([name.removesuffix("_s") + " time", f"{seconds:.1f} s"])
    return rows
