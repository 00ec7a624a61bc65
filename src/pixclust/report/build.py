"""Build a run folder's pictures: ``plots/*.png`` and one self-contained ``report.html``.

Everything is read back from the run folder (embeddings.parquet,
clusters.csv, errors.csv, run.json), so ``pixclust report RUN`` rebuilds
exactly what ``pixclust cluster`` made; a run of ``pixclust cluster-shards`` is shown
by a uniform sample of its rows (:mod:`pixclust.report.sharded_view`). Maps are cached in ``maps.parquet``,
thumbnails in ``thumbnails.parquet`` and duplicate groups in
``duplicates.parquet``; a rebuild recomputes none of them.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixclust.atomic import atomic_path, write_text_atomic
from pixclust.clustering.maps import DEFAULT_MAPS, check_map_methods
from pixclust.curation.duplicates import DuplicateReport
from pixclust.curation.edits import run_identity
from pixclust.curation.export import NOVEL_CLUSTER, NOVEL_LABEL
from pixclust.curation.flags import FLAG_NAMES
from pixclust.embeddings import Embeddings
from pixclust.names import escape_name
from pixclust.progress import quietly
from pixclust.report import plots
from pixclust.report.caches import load_duplicates, load_maps
from pixclust.report.figures import contact_sheet
from pixclust.report.run_view import RunView, load_run
from pixclust.report.sharded_view import load_sharded_run
from pixclust.report.thumbnails import THUMB_SIDE, load_thumbnails
from pixclust.runs.folder import (
    CLUSTER_TABLE_DIR,
    CLUSTER_TABLE_SUMMARY,
    CLUSTERS_CSV,
    PLOTS_DIR,
    REPORT_FILE,
    RunFolder,
    is_sharded_run,
)
from pixclust.runs.record import RunRecord

MONTAGE_SIZE = 32
_NOT_FLAGGED = "Quality flags are measured when images are embedded by 'pixclust cluster'; a sharded run has none."
_PLACEHOLDER = re.compile(r"\{\{(TITLE|CSS|PLOTLY|DATA|APP)\}\}")


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
            if is_sharded_run(folder.root):
                view = load_sharded_run(folder.root, random_state=random_state)
            else:
                view = load_run(folder.root, record, embeddings)
            return _build_report(folder, view, methods, html=html, random_state=random_state)


def _build_report(folder: RunFolder, view: RunView, methods: tuple[str, ...], *, html: bool, random_state: int) -> Path:
    coords = load_maps(view, methods, random_state=random_state)
    thumbnails = load_thumbnails(view.run_dir, view.paths, view.hashes)
    # Duplicates among a sample of a run would be a few pairs met by chance; duplicates-shards searches every row.
    duplicates = load_duplicates(view) if view.sample_of is None else None
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
    duplicates: DuplicateReport | None,
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
    duplicates: DuplicateReport | None,
) -> dict[str, Any]:
    names = view.names
    # Clusters first, then the groups that are none: noise or _new (-1), _outliers (-2), _excluded (-3).
    ids = [label for label in names if label >= 0] + sorted((label for label in names if label < 0), reverse=True)
    colours = dict(zip([label for label in ids if label >= 0], plots.cluster_colours(len(ids)), strict=False))
    # A run whose folders are named by what they show (--name-folders) says it once, in the folder name.
    shows = {} if view.record.config.get("name_folders") else view.descriptions
    unique_thumbs = {
        digest: index for index, digest in enumerate(dict.fromkeys(h for h in view.hashes if h in thumbnails))
    }
    return {
        "title": _title(view),
        # What an edits file saved from this page names as its run (pixclust apply checks it).
        "run": run_identity(view.record.run_id, _identity_file(view)),
        "summary": _summary_rows(view, duplicates),
        # The whole run's size when the page shows a sample of it (a sharded run), else null.
        "sample_of": view.sample_of,
        "clusters": [
            {
                "id": label,
                "name": names[label],
                "shows": shows.get(label, ""),
                "size": view.size(label),
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
        "flags": _flags_data(view),
        "errors": [[escape_name(text) for text in (item.path, item.reason, item.detail)] for item in view.errors],
    }


def _identity_file(view: RunView) -> Path:
    """The file whose digest names the run's state in an edits file: clusters.csv, or a sharded run's summary."""
    if view.sample_of is None:
        return view.run_dir / CLUSTERS_CSV
    return view.run_dir / CLUSTER_TABLE_DIR / CLUSTER_TABLE_SUMMARY


def _duplicates_data(view: RunView, duplicates: DuplicateReport | None) -> dict[str, Any]:
    """Groups with the keeper first; rows index ``points``, so the page reuses their thumbnails."""
    if duplicates is None:
        headline = (
            "A sharded run's report does not look for duplicates; 'pixclust duplicates-shards' finds them among all "
            f"{_count(view.sample_of or len(view.paths), 'image')}."
        )
        return {"threshold": None, "headline": headline, "groups": []}
    checked = f"{duplicates.verified:,} look-alike pairs compared on their files"
    if duplicates.groups:
        headline = (
            f"{_count(len(duplicates.groups), 'group')}, {_count(duplicates.n_redundant, 'redundant image')}: "
            f"exact copies, and pictures found the same in structure or keypoints and in colour ({checked}). "
            "The first of each group (a whole picture, the most pixels) is the one to keep; hover over a copy "
            "for the evidence, click an image to see its cluster."
        )
    else:
        headline = f"No duplicates found ({checked})."
    groups = []
    for group in duplicates.groups:
        rows = [group.keeper, *(row for row in group.rows if row != group.keeper)]
        position = {row: index for index, row in enumerate(group.rows)}
        groups.append(
            {
                "rows": rows,
                "keeper": group.keeper,
                "kind": group.kind,
                "similarity": round(group.min_similarity, 4),
                "kinds": [group.kinds[position[row]] for row in rows],
                "evidence": [group.evidence[position[row]] for row in rows],
                "sizes": view.embeddings.image_sizes[rows].tolist(),
            }
        )
    return {"threshold": duplicates.threshold, "headline": headline, "groups": groups}


def _flags_data(view: RunView) -> dict[str, Any]:
    """Flagged images, worst first (rows index ``points``), and how many carry each flag."""
    if view.sample_of is not None:
        return {"headline": _NOT_FLAGGED, "counts": [], "rows": [], "flags": []}
    rows = [row for row, flags in enumerate(view.flags) if flags]
    rows.sort(key=lambda row: -np.nan_to_num(view.flag_scores[row], nan=0.0))
    counted = Counter(flag for row in rows for flag in view.flags[row])
    known = {flag: index for index, flag in enumerate(FLAG_NAMES)}
    counts = dict(sorted(counted.items(), key=lambda item: (known.get(item[0], len(known)), item[0])))
    if rows:
        each = ", ".join(f"{flag} {count:,}" for flag, count in counts.items())
        headline = (
            f"{_count(len(rows), 'image')} flagged ({each}): unusual against both their cluster and the whole "
            "collection, worst first. clusters.csv has the flags and their score; --flag-threshold tunes them."
        )
    else:
        headline = "No image is flagged as blurry, dark, overexposed, blank, tiny, oddly shaped or out of place."
    return {
        "headline": headline,
        "counts": [[flag, count] for flag, count in counts.items()],
        "rows": rows,
        "flags": [";".join(view.flags[row]) for row in rows],
    }


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _images_shown(view: RunView) -> str:
    if view.sample_of is None or view.sample_of == len(view.paths):
        return f"{len(view.paths):,}"
    return f"{view.sample_of:,} ({len(view.paths):,} shown: a uniform sample)"


def _summary_rows(view: RunView, duplicates: DuplicateReport | None) -> list[list[str]]:
    record = view.record
    counts, clustering, model = record.counts, record.clustering, record.model
    sampled = view.sample_of is not None
    rows = [
        ["images", _images_shown(view)],
        ["clusters", str(len([label for label in view.names if label >= 0]))],
        ["files not used", "not known (embedded elsewhere)" if sampled else f"{len(view.errors):,}"],
        [
            "duplicate groups",
            "not looked for (pixclust duplicates-shards)"
            if duplicates is None
            else f"{len(duplicates.groups):,} ({_count(duplicates.n_redundant, 'redundant image')})",
        ],
        ["quality flags", "not measured" if sampled else _count(sum(1 for flags in view.flags if flags), "image")],
        ["model", str(model.get("model", "?"))],
        ["weights", str(model.get("weights", "?"))],
        ["method", f"{clustering.get('reduce', '?')} → {clustering.get('method', '?')}"],
    ]
    # Batches from before the last clustering are history: their images were clustered with the rest.
    since = [batch for batch in record.batches if str(batch.get("created", "")) > str(record.created or "")]
    if since:
        added = sum(int(batch.get("added", 0)) for batch in since)
        novel = int(np.sum(view.labels == NOVEL_LABEL)) if view.names.get(NOVEL_LABEL) == NOVEL_CLUSTER else 0
        rows.append(
            [
                "added since clustering",
                f"{_count(added, 'image')} in {len(since):,} batch{'' if len(since) == 1 else 'es'} (pixclust add), "
                f"{novel:,} fitting no cluster (in {NOVEL_CLUSTER})",
            ]
        )
    silhouette = clustering.get("silhouette")
    fitted_on = clustering.get("fitted_on")
    if fitted_on is not None:
        rows.append(["fitted on", f"{_count(int(fitted_on), 'image')} (a uniform sample, on Ray)"])
    if silhouette is not None:
        rows.append(["silhouette" + (" (of the fitted sample)" if fitted_on is not None else ""), f"{silhouette:.3f}"])
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
            # Runs made before the neighbours' vote have no voted_share.
            voted = choice.get("voted_share")
            by_vote = "" if voted is None else f", {voted:.1%} by their neighbours' vote"
            rows.append(
                [
                    "refined on",
                    f"{choice['refined_on']} ({choice['refined_share']:.1%} of images moved{by_vote}{agreed})",
                ]
            )
    scan = clustering.get("k_scan")
    if scan:
        rows.append([f"k by {scan['criterion']} / elbow", f"{scan['chosen_k']} / {scan['elbow_k'] or 'none'}"])
    scores = record.scores
    if scores:
        rows.append(["ACC / NMI / ARI", " / ".join(f"{scores[key]:.3f}" for key in ("acc", "nmi", "ari"))])
    if counts and not sampled:
        rows.append(["embedded / reused", f"{counts.get('extracted', 0):,} / {counts.get('reused', 0):,}"])
    for name, seconds in record.timings_s.items():
        rows.append([name.removesuffix("_s") + " time", f"{seconds:.1f} s"])
    return rows
