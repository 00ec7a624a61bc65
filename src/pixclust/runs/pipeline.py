"""The public API: ``embed`` a folder (from :mod:`pixclust.embedding.extraction`), ``cluster`` embeddings, ``run`` the whole job.

These functions are what the CLI calls and what a Python user imports; they
return plain result objects (arrays and lists) and write files only in
``run``, only inside the run folder.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Collection
from dataclasses import KW_ONLY, MISSING, Field, InitVar, asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pixclust.clustering.adaptive import EMBEDDING_VIEW, HOG_VIEW, AdaptiveClusterer
from pixclust.clustering.clusterer import CLUSTER_METHODS, ClusterResult, ImageClusterer
from pixclust.clustering.maps import DEFAULT_MAPS, MAP_METHODS
from pixclust.clustering.metrics import clustering_scores
from pixclust.clustering.reduce import REDUCE_METHODS, is_whole_number, project_2d, reduce_features
from pixclust.curation.export import (
    ClusterRow,
    cluster_summary,
    export_cluster_folders,
    write_clusters_csv,
    write_errors_csv,
    write_run_json,
)
from pixclust.curation.move import MoveReport, check_no_moves, move_into_clusters
from pixclust.embedding.embedder import DEFAULT_BATCH_SIZE
from pixclust.embedding.engines import ENGINES, check_engine
from pixclust.embedding.extraction import embed
from pixclust.embedding.images import DEFAULT_MAX_PIXELS
from pixclust.embedding.models import DEFAULT_MODEL
from pixclust.embedding.runtimes import PRECISIONS, RUNTIMES
from pixclust.embeddings import Embeddings
from pixclust.errors import NoImagesError, UsageError
from pixclust.report import build_report
from pixclust.runs.folder import CLUSTERS_CSV, CLUSTERS_DIR, ERRORS_CSV, RUN_JSON, VIEWS_DIR, RunFolder
from pixclust.runs.truth import load_truth

PIPELINES = ("auto", "fixed")
HOG_MODEL = "hog"


def cluster(
    data: Embeddings | np.ndarray,
    *,
    k: int | str = "auto",
    pipeline: str = "auto",
    method: str | None = None,
    reduce: str | None = None,
    n_components: int | None = None,
    k_range: tuple[int, int] = (2, 20),
    hog: np.ndarray | None = None,
    refine: bool = True,
    random_state: int = 0,
) -> ClusterResult:
    """Cluster embeddings (one row per image).

    ``pipeline="auto"`` (the default) chooses between the embedding and the
    embedding joined with ``hog`` (HOG vectors of the same images, when given)
    by stability, picks k by kNN-graph modularity, runs k-means and refines it
    (``refine=False`` stops after k-means); see :mod:`pixclust.clustering.adaptive`.
    ``pipeline="fixed"`` reduces (L2 + PCA, or ``reduce``: UMAP/LLE/spectral)
    and runs ``method`` (default k-means), picking k by silhouette. Giving
    ``method`` or ``reduce`` means the fixed pipeline.
    """
    vectors = data.vectors if isinstance(data, Embeddings) else np.asarray(data)
    if len(vectors) == 0:
        raise NoImagesError("no embeddings to cluster; point pixclust at a folder with usable images")
    if k != "auto" and is_whole_number(k) and k > len(vectors):
        # Both pipelines refuse, rather than one making fewer clusters than asked without a word.
        raise UsageError(
            f"k {k} is more than the {len(vectors)} images; ask for at most {len(vectors)} clusters, or for 'auto'"
        )
    pipeline = resolve_pipeline(pipeline, method, reduce)
    if pipeline == "auto":
        views = {EMBEDDING_VIEW: vectors} | ({HOG_VIEW: np.asarray(hog)} if hog is not None else {})
        adaptive = AdaptiveClusterer(k=k, k_range=k_range, refine=refine, random_state=random_state).fit(views).result_
        return ClusterResult(
            labels=adaptive.labels,
            n_clusters=adaptive.n_clusters,
            distances=adaptive.distances,
            silhouettes=adaptive.silhouettes,
            coords_2d=project_2d(vectors, random_state=random_state),
            reduction=adaptive.reduction,
            k_scan=adaptive.k_scan,
            silhouette=adaptive.silhouette,
            method="kmeans+refine" if adaptive.refined_share is not None else "kmeans",
            choice=adaptive.record(),
        )
    method = method or "kmeans"
    reduction = reduce_features(vectors, reduce or "pca", n_components=n_components, random_state=random_state)
    clusterer = ImageClusterer(method=method, k=k, k_range=k_range, random_state=random_state).fit(reduction.coords)
    return ClusterResult(
        labels=clusterer.labels_,
        n_clusters=clusterer.n_clusters_,
        distances=clusterer.distances_,
        silhouettes=clusterer.silhouette_values_,
        coords_2d=project_2d(vectors, random_state=random_state),
        reduction=reduction,
        k_scan=clusterer.k_scan_,
        silhouette=clusterer.silhouette_,
        method=method,
    )


def resolve_pipeline(pipeline: str, method: str | None, reduce: str | None) -> str:
    """``"auto"`` or ``"fixed"``; an explicit ``method`` or ``reduce`` asks for the fixed pipeline."""
    if pipeline not in PIPELINES:
        raise UsageError(f"--pipeline {pipeline!r} is not known; choose one of {', '.join(PIPELINES)}")
    if method is not None and method not in CLUSTER_METHODS:
        raise UsageError(f"--method {method!r} is not known; choose one of {', '.join(CLUSTER_METHODS)}")
    if reduce is not None and reduce not in REDUCE_METHODS:
        raise UsageError(f"--reduce {reduce!r} is not known; choose one of {', '.join(REDUCE_METHODS)}")
    return "fixed" if method is not None or reduce is not None else pipeline


@dataclass
class RunConfig:
    """Every choice of a ``pixclust cluster`` run; saved in run.json so the run can be repeated.

    Checked once, here, whoever made it (Python, the CLI, a run.json given to
    ``--config``): each setting's type and range, and any setting the caller chose
    that this run would ignore. ``given`` names the settings the caller chose: by
    default each one that differs from its default; the CLI passes the options
    typed, so values replayed from a run.json never count, and one that clashes
    with an option typed gives way to it. ``from_cli`` has messages name options
    (``--k``) rather than keywords (``k=``). Neither is saved.
    """

    source: str
    out: str
    model: str = DEFAULT_MODEL
    weights: str | None = None
    k: int | str = "auto"
    k_min: int = 2
    k_max: int = 20
    pipeline: str = "auto"
    method: str | None = None
    reduce: str | None = None
    n_components: int | None = None
    refine: bool = True
    seed: int = 0
    truth: str | None = None
    copy: bool = False
    move: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    include_hidden: bool = False
    runtime: str = "auto"
    precision: str = "auto"
    report: bool = True
    maps: list[str] = field(default_factory=lambda: list(DEFAULT_MAPS))
    engine: str = "local"
    address: str | None = None
    _: KW_ONLY
    given: InitVar[Collection[str] | None] = None
    from_cli: InitVar[bool] = False

    def __post_init__(self, given: Collection[str] | None, from_cli: bool) -> None:
        if given is None:
            given = [spec.name for spec in fields(self) if not _is_default(spec, getattr(self, spec.name))]
        words = _Wording(from_cli, frozenset(given))
        self._check_each(words)
        self._check_together(words)

    def _check_each(self, words: _Wording) -> None:
        for name in ("source", "out", "weights", "truth"):
            setattr(self, name, _checked_path(words, name, getattr(self, name)))
        for name in ("model", "address"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value) and not (name == "address" and value is None):
                raise UsageError(f"{words.said(name, value)} must be a name")
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if not (value is None and name in ("method", "reduce")) and (
                not isinstance(value, str) or value not in choices
            ):
                raise UsageError(f"{words.said(name, value)} is not known; choose one of {', '.join(choices)}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{words.said(name, getattr(self, name))} must be {words.typed_bools}")
        for name, (low, high) in _WHOLE_NUMBERS.items():
            value = getattr(self, name)
            if value is None and name in ("workers", "n_components"):
                continue
            if not is_whole_number(value) or value < low or (high is not None and value > high):
                limits = f">= {low}" if high is None else f"from {low} to {high}"
                raise UsageError(f"{words.said(name, value)} must be a whole number {limits}")
            setattr(self, name, int(value))
        self.k = _checked_k(words, self.k)
        if not isinstance(self.maps, (list, tuple)) or not all(isinstance(name, str) for name in self.maps):
            raise UsageError(f"{words.said('maps', self.maps)} must be a list of map names: {', '.join(MAP_METHODS)}")
        unknown = [name for name in self.maps if name not in MAP_METHODS]
        if unknown:
            raise UsageError(
                f"{words.said('maps', self.maps)}: {unknown[0]!r} is not known; choose from {', '.join(MAP_METHODS)}"
            )
        self.maps = list(dict.fromkeys(self.maps))

    def _check_together(self, words: _Wording) -> None:
        if self.copy and self.move:
            if len(words.given & {"copy", "move"}) != 1:
                raise UsageError(
                    f"{words.said('copy', True)} and {words.said('move', True)} both say what goes into clusters/; choose one"
                )
            self.copy, self.move = "copy" in words.given, "move" in words.given
        if self.engine != "ray" and self.address is not None:
            self.address = words.replayed_only(
                "address", self.address, f"names a Ray cluster; add {words.typed('engine', 'ray')}, or drop it"
            )
        if self.engine == "ray" and self.workers is not None:
            self.workers = words.replayed_only(
                "workers",
                self.workers,
                f"sets the local engine's decode processes; drop it with {words.typed('engine', 'ray')}",
            )
        if self.pipeline == "auto" and "pipeline" in words.given:
            for name in ("method", "reduce"):
                if getattr(self, name) is not None:
                    why = f"belongs to the fixed pipeline, and {words.said('pipeline', 'auto')} asks for the auto one; drop one"
                    setattr(self, name, words.replayed_only(name, getattr(self, name), why))
        self.pipeline = resolve_pipeline(self.pipeline, self.method, self.reduce)
        if self.k_min > self.k_max:
            raise UsageError(
                f"k range {self.k_min}..{self.k_max} is empty; need 2 <= {words.name('k_min')} <= {words.name('k_max')}"
            )
        if self.method == "hdbscan" and self.k != "auto":
            raise UsageError(
                f"{words.said('k', self.k)} cannot be used with hdbscan, which finds the number of clusters itself"
            )
        scans_k = self.k == "auto" and self.method != "hdbscan"
        unused = {
            "n_components": self.pipeline == "auto" or self.reduce == "none",
            "refine": self.pipeline == "fixed",
            "k_min": not scans_k,
            "k_max": not scans_k,
            "maps": not self.report,
        }
        for name in sorted(words.given):
            if unused.get(name):
                raise UsageError(
                    f"{words.said(name, getattr(self, name))} is not used: {_UNUSED_BECAUSE[name]}; drop it"
                )
        check_engine(self.engine, self.address, self.workers)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], *, given: Collection[str] | None = None, from_cli: bool = False
    ) -> RunConfig:
        """A config from settings by name (a run.json's "config"); ``given`` and ``from_cli`` as for the class."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"run config has unknown settings {', '.join(unknown)}; was it written by pixclust?")
        # A folder left out is reported by the checks, as one that is not a path, rather than as a TypeError.
        return cls(**({"source": None, "out": None} | values), given=given, from_cli=from_cli)


_BOOLS = ("refine", "copy", "move", "include_hidden", "report")
_CHOICES = {
    "pipeline": PIPELINES,
    "method": CLUSTER_METHODS,
    "reduce": REDUCE_METHODS,
    "runtime": RUNTIMES,
    "precision": PRECISIONS,
    "engine": ENGINES,
}
# (smallest, largest or None); scikit-learn takes seeds below 2**32, and workers=0 decodes in this process.
_WHOLE_NUMBERS = {
    "k_min": (2, None),
    "k_max": (2, None),
    "seed": (0, 2**32 - 1),
    "batch_size": (1, None),
    "max_pixels": (1, None),
    "workers": (0, None),
    "n_components": (1, None),
}
_UNUSED_BECAUSE = {
    "n_components": "only the fixed pipeline's pca, umap, lle and spectral reductions keep a number of dimensions",
    "refine": "only the auto pipeline refines its clusters",
    "k_min": "a range of k is scanned only when k is 'auto' and the method is not hdbscan",
    "k_max": "a range of k is scanned only when k is 'auto' and the method is not hdbscan",
    "maps": "maps are drawn in the report, and this run writes none",
}
_OPTION_NAMES = {"source": "SOURCE", "maps": "--map"}


def _is_default(spec: Field[Any], value: Any) -> bool:
    default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
    return type(value) is type(default) and value == default


def _checked_path(words: _Wording, setting: str, value: Any) -> str | None:
    """``value`` as a path string (``os.PathLike`` taken too); None only for the settings that may be left out."""
    if value is None and setting in ("weights", "truth"):
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path or "\0" in path:
        raise UsageError(f"{words.said(setting, value)} must be a path (not empty, no NUL character)")
    return path


def _checked_k(words: _Wording, k: Any) -> int | str:
    """``"auto"`` or a whole number >= 2; a string of ASCII digits counts as one (the CLI passes text)."""
    if isinstance(k, str) and k == "auto":
        return k
    # isdigit() alone takes "²" and other digits int() refuses; 18 digits stay under int()'s length limit.
    number = int(k) if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 18 else k
    if not is_whole_number(number) or number < 2:
        raise UsageError(f"{words.said('k', k)} must be a whole number >= 2, or 'auto'")
    return int(number)


@dataclass(frozen=True)
class _Wording:
    """Names a setting in a message the way the caller set it: ``k=0``, ``--k '0'``, or ``"k": 0 in --config``."""

    from_cli: bool
    given: frozenset[str]

    def name(self, setting: str) -> str:
        return _OPTION_NAMES.get(setting, "--" + setting.replace("_", "-")) if self.from_cli else setting

    @property
    def typed_bools(self) -> str:
        return "true or false" if self.from_cli else "True or False"

    def typed(self, setting: str, value: Any) -> str:
        """How the caller would set ``setting`` to ``value``: ``engine='ray'`` or ``--engine ray``."""
        return f"{self.name(setting)} {value}" if self.from_cli else f"{setting}={value!r}"

    def said(self, setting: str, value: Any) -> str:
        if not self.from_cli:
            return f"{setting}={value!r}"
        if setting not in self.given:
            return f'"{setting}": {json.dumps(value, default=str)} in --config'
        if isinstance(value, bool):
            return (
                "--link"
                if setting == "copy" and not value
                else f"--{'' if value else 'no-'}{setting.replace('_', '-')}"
            )
        shown = ",".join(value) if setting == "maps" else value
        return f"{self.name(setting)} {shown!r}" if isinstance(shown, str) else f"{self.name(setting)} {shown}"

    def replayed_only(self, setting: str, value: Any, why: str) -> None:
        """None for a setting the choices made leave without a use: quietly when replayed, an error when chosen."""
        if setting in self.given:
            raise UsageError(f"{self.said(setting, value)} {why}")
        return None


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    embeddings: Embeddings
    clustering: ClusterResult
    summary: list[ClusterRow]
    scores: dict[str, float] | None
    n_scored: int
    timings: dict[str, float] = field(default_factory=dict)
    moves: MoveReport | None = None


def run(config: RunConfig, *, quiet: bool = False) -> RunResult:
    """Embed, cluster and export ``config.source`` into the run folder ``config.out``, holding its lock throughout."""
    folder = _open_run_folder(config)
    with folder.writing():
        check_no_moves(folder)
        # Before the minutes of embedding, not after: clusters/ will be replaced, and it must all be pixclust's.
        folder.check_replaceable(CLUSTERS_DIR)
        return _run_in(folder, config, quiet=quiet)


def _run_in(folder: RunFolder, config: RunConfig, *, quiet: bool) -> RunResult:
    run_dir = folder.root
    timings: dict[str, float] = {}
    started = time.perf_counter()
    embeddings = _embed_source(
        config,
        out=run_dir,
        model=config.model,
        weights=config.weights,
        runtime=config.runtime,
        precision=config.precision,
        quiet=quiet,
    )
    timings["embed_s"] = time.perf_counter() - started
    write_errors_csv(run_dir / ERRORS_CSV, embeddings.skipped)
    if len(embeddings) == 0:
        raise NoImagesError(
            f"no usable images in {config.source}: {len(embeddings.skipped)} files skipped "
            f"(reasons in {run_dir / ERRORS_CSV}); point pixclust at a folder of JPEG/PNG/WebP/BMP/TIFF/GIF images"
        )

    started = time.perf_counter()
    hog = _hog_view(config, run_dir, embeddings, quiet=quiet) if config.pipeline == "auto" else None
    timings["hog_s"] = time.perf_counter() - started
    started = time.perf_counter()
    clustering = cluster(
        embeddings,
        k=config.k,
        pipeline=config.pipeline,
        method=config.method,
        reduce=config.reduce,
        n_components=config.n_components,
        k_range=(config.k_min, config.k_max),
        hog=hog,
        refine=config.refine,
        random_state=config.seed,
    )
    timings["cluster_s"] = time.perf_counter() - started
    # The HOG matrix (0.5 GB at 70,000 images) is not needed past clustering; the report holds its own arrays.
    del hog

    scores, n_scored = None, 0
    if config.truth:
        truth = load_truth(config.truth, embeddings.paths, config.source)
        scored = [i for i, label in enumerate(truth) if label is not None]
        n_scored = len(scored)
        if scored:
            scores = clustering_scores([truth[i] for i in scored], clustering.labels[scored])

    started = time.perf_counter()
    write_clusters_csv(run_dir / CLUSTERS_CSV, embeddings.paths, clustering)
    if not config.move:
        export_cluster_folders(folder, embeddings.paths, clustering.labels, copy=config.copy)
    timings["export_s"] = time.perf_counter() - started
    result = RunResult(
        config, run_dir, embeddings, clustering, cluster_summary(clustering.labels), scores, n_scored, timings
    )
    if config.report:
        started = time.perf_counter()
        build_report(
            run_dir,
            maps=config.maps,
            record=run_record(result),
            embeddings=embeddings,
            random_state=config.seed,
            quiet=quiet,
        )
        timings["report_s"] = time.perf_counter() - started
    write_run_json(run_dir / RUN_JSON, run_record(result))
    if config.move:
        # Last, once the report has read every image where it was.
        result.moves = move_into_clusters(folder, config.source, embeddings.paths, clustering.labels)
    return result


def _embed_source(
    config: RunConfig,
    *,
    out: Path,
    model: str,
    quiet: bool,
    weights: str | None = None,
    runtime: str = "auto",
    precision: str = "auto",
) -> Embeddings:
    """``embed`` of the run's source into ``out`` with ``model``, reading files as the config says."""
    return embed(
        config.source,
        model=model,
        weights=weights,
        runtime=runtime,
        precision=precision,
        out=out,
        batch_size=config.batch_size,
        num_workers=config.workers,
        max_pixels=config.max_pixels,
        include_hidden=config.include_hidden,
        quiet=quiet,
        engine=config.engine,
        address=config.address,
    )


def _hog_view(config: RunConfig, run_dir: Path, embeddings: Embeddings, *, quiet: bool) -> np.ndarray | None:
    """HOG vectors in the order of ``embeddings``, stored (and reused) in the run's views/hog/ folder.

    None when the model is HOG already, or when some image gave an embedding
    but no HOG vector (then the adaptive pipeline uses the embedding alone).
    """
    if config.model == HOG_MODEL:
        return None
    hog = _embed_source(config, out=run_dir / VIEWS_DIR / HOG_VIEW, model=HOG_MODEL, quiet=quiet)
    if hog.paths == embeddings.paths:
        # The same folder read the same way: already in order, and a reordered copy would cost another matrix.
        return hog.vectors
    row_of = {path: row for row, path in enumerate(hog.paths)}
    rows = [row_of.get(path) for path in embeddings.paths]
    if any(row is None for row in rows):
        return None
    return hog.vectors[np.asarray(rows, dtype=np.int64)]


def _open_run_folder(config: RunConfig) -> RunFolder:
    """The run folder, once it is clear that neither it nor the image folder lies inside the other (links resolved)."""
    source = Path(config.source)
    if not source.exists():
        raise UsageError(f"{config.source} does not exist; give a folder (or file) of images")
    run_real, source_real = os.path.realpath(config.out), os.path.realpath(config.source)
    if source.is_dir() and _is_within(run_real, source_real):
        raise UsageError(
            f"--out {config.out} is inside the image folder {config.source}; pixclust never writes into "
            "your image folders, so choose an --out outside it"
        )
    if _is_within(source_real, run_real):
        raise UsageError(
            f"the image folder {config.source} is inside the run folder --out {config.out}, whose files pixclust "
            "replaces; choose an --out outside it"
        )
    return RunFolder.open(config.out)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def run_record(result: RunResult) -> dict[str, Any]:
    """Everything run.json keeps: parameters, model and weights, counts, choices, scores, timings, versions.

    Plain JSON types throughout, so the record in memory equals the one read back from disk.
    """
    embeddings, clustering = result.embeddings, result.clustering
    k_scan = clustering.k_scan
    return {
        "pixclust_version": _version("pixclust"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(result.config),
        "model": embeddings.model,
        "counts": {
            "images_used": len(embeddings),
            "files_skipped": len(embeddings.skipped),
            "extracted": embeddings.n_extracted,
            "reused": embeddings.n_reused,
        },
        "clustering": {
            "method": clustering.method,
            "reduce": clustering.reduction.method,
            "space_dims": int(clustering.reduction.coords.shape[1]),
            "n_clusters": clustering.n_clusters,
            "silhouette": _finite_or_none(clustering.silhouette),
            "pca_explained_variance_ratio": clustering.reduction.pca_explained_variance_ratio.tolist(),
            "k_scan": None
            if k_scan is None
            else {
                "k": k_scan.ks.tolist(),
                "inertia": k_scan.inertia.tolist(),
                "silhouette": [_finite_or_none(v) for v in k_scan.silhouette],
                "chosen_k": k_scan.chosen_k,
                "criterion": k_scan.criterion,
                "modularity": None if k_scan.modularity is None else [_finite_or_none(v) for v in k_scan.modularity],
                "elbow_k": k_scan.elbow_k,
            },
            "pipeline": clustering.choice,
            "sizes": {row.name: row.images for row in result.summary},
        },
        "scores": result.scores,
        "n_scored": result.n_scored,
        "timings_s": {name: round(value, 3) for name, value in result.timings.items()},
        "versions": {
            "python": platform.python_version(),
            **{
                name: _version(name)
                for name in ("torch", "timm", "scikit-learn", "numpy", "pillow", "pyarrow", "umap-learn")
            },
        },
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
